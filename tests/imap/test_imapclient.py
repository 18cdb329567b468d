"""IMAP with imapclient (a real third-party client), plus the concurrency test with POP3 and deliveries."""

from __future__ import annotations

import asyncio
import poplib
import random
import threading
from datetime import datetime

import imapclient
import pytest

from appliance.pop3.server import start_pop3
from tests.imap.conftest import PASSWORD, ImapServer

MSG = b"From: ann@example.net\r\nTo: alice@example.org\r\nSubject: %d\r\n\r\nbody %d\r\n"


@pytest.fixture
def client(imap_server: ImapServer):
    conn = imapclient.IMAPClient(imap_server.host, port=imap_server.port, ssl=False, timeout=30)
    conn.login("alice@example.org", PASSWORD)
    yield conn
    conn.logout()


def test_folders_with_special_use(client: imapclient.IMAPClient) -> None:
    folders = {name: flags for flags, _, name in client.list_folders()}
    assert set(folders) == {"INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"}
    assert b"\\Sent" in folders["Sent"]
    assert client.find_special_folder(b"\\Trash") == "Trash"
    assert client.find_special_folder(b"\\Junk") == "Junk"
    client.create_folder("Projekte/Übersicht")
    assert client.folder_exists("Projekte/Übersicht")
    client.rename_folder("Projekte/Übersicht", "Projekte/Overview")
    assert "Projekte/Overview" in [n for _, _, n in client.list_folders("Projekte/")]
    client.delete_folder("Projekte/Overview")
    assert not client.folder_exists("Projekte/Overview")


def test_fetch_search_store_move(client: imapclient.IMAPClient, imap_server: ImapServer) -> None:
    for i in range(5):
        imap_server.deliver(MSG % (i, i))
    info = client.select_folder("INBOX")
    assert info[b"EXISTS"] == 5 and info[b"UIDNEXT"] == 6
    data = client.fetch(client.search("ALL"), ["FLAGS", "ENVELOPE", "RFC822.SIZE", "INTERNALDATE"])
    assert sorted(data) == [1, 2, 3, 4, 5]
    env = data[3][b"ENVELOPE"]
    assert env.subject == b"2" and env.from_[0].mailbox == b"ann" and env.from_[0].host == b"example.net"
    assert isinstance(data[3][b"INTERNALDATE"], datetime)
    assert client.search(["SUBJECT", "3"]) == [4]
    assert client.search(["NOT", "SUBJECT", "3", "SMALLER", "1000"]) == [1, 2, 3, 5]
    client.add_flags([1, 2], [imapclient.SEEN, b"$Important"])
    assert set(client.get_flags([1])[1]) == {b"\\Seen", b"$Important", b"\\Recent"}
    client.remove_flags([2], [b"$Important"])
    assert set(client.get_flags([2])[2]) == {b"\\Seen", b"\\Recent"}
    client.set_flags([3], [imapclient.FLAGGED])
    assert client.search("FLAGGED") == [3]
    client.move([4, 5], "Archive")
    assert client.search("ALL") == [1, 2, 3]
    assert client.folder_status("Archive", ["MESSAGES", "UIDNEXT"]) == {b"MESSAGES": 2, b"UIDNEXT": 3}
    body = client.fetch([1], ["BODY[]"])[1][b"BODY[]"]
    assert body == MSG % (0, 0)
    client.delete_messages([1])
    client.expunge()
    assert client.search("ALL") == [2, 3]


def test_append_and_uidplus(client: imapclient.IMAPClient) -> None:
    when = datetime(2019, 12, 24, 18, 0, 0)
    result = client.append("Drafts", b"Subject: draft\r\n\r\nwip\r\n", flags=[imapclient.DRAFT], msg_time=when)
    assert b"APPENDUID" in result
    client.select_folder("Drafts")
    fetched = client.fetch("1", ["FLAGS", "INTERNALDATE"])[1]
    assert imapclient.DRAFT in fetched[b"FLAGS"]
    assert fetched[b"INTERNALDATE"].replace(tzinfo=None) == when


def test_idle_with_imapclient(client: imapclient.IMAPClient, imap_server: ImapServer) -> None:
    client.select_folder("INBOX")
    client.idle()
    threading.Timer(0.3, imap_server.deliver, args=(MSG % (9, 9),)).start()
    responses = client.idle_check(timeout=10)
    client.idle_done()
    assert (1, b"EXISTS") in responses


def test_condstore_with_imapclient(client: imapclient.IMAPClient, imap_server: ImapServer) -> None:
    imap_server.deliver(MSG % (1, 1))
    imap_server.deliver(MSG % (2, 2))
    assert client.has_capability("CONDSTORE")
    assert client.enable("CONDSTORE") == [b"CONDSTORE"]
    info = client.select_folder("INBOX")
    base = info[b"HIGHESTMODSEQ"]
    client.add_flags([2], [imapclient.FLAGGED])
    changed = client.fetch([1, 2], ["FLAGS"], modifiers=[f"CHANGEDSINCE {base}"])
    assert list(changed) == [2] and changed[2][b"MODSEQ"][0] > base


def test_concurrent_deliveries_two_imap_sessions_and_pop3(imap_server: ImapServer) -> None:
    """Deliveries keep arriving while two IMAP sessions and one POP3 session work on the same INBOX;
    every session must see the same UIDs, in order, with consistent flags."""
    pop_servers = asyncio.run_coroutine_threadsafe(
        start_pop3(["127.0.0.1:0"], [], imap_server.store, imap_server.authenticator, None, "pop.example.org",
                   True), imap_server.loop).result(10)
    pop_port = pop_servers[0].sockets[0].getsockname()[1]
    stop = threading.Event()
    delivered: list[int] = []

    def deliver_loop() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            delivered.append(imap_server.deliver(MSG % (i, i)))
            i += 1

    deliverer = threading.Thread(target=deliver_loop)
    deliverer.start()
    a = imapclient.IMAPClient(imap_server.host, port=imap_server.port, ssl=False, timeout=30)
    b = imapclient.IMAPClient(imap_server.host, port=imap_server.port, ssl=False, timeout=30)
    a.login("alice@example.org", PASSWORD)
    b.login("alice@example.org", PASSWORD)
    a.select_folder("INBOX")
    b.select_folder("INBOX")
    b.use_uid = False  # b works with sequence numbers, a with UIDs
    rng = random.Random(7)
    flagged: set[int] = set()
    for _ in range(30):
        uids = a.search("ALL")
        if uids:
            pick = rng.sample(uids, min(3, len(uids)))
            a.add_flags(pick, [imapclient.FLAGGED])
            flagged.update(pick)
        b.noop()  # take the pending EXISTS / FETCH FLAGS updates first, as a real client does
        seqs = b.search("ALL")
        seen = b.fetch(seqs, ["UID", "FLAGS"]) if seqs else {}
        assert sorted(seen) == list(range(1, len(seqs) + 1))
        # sequence numbers map to strictly increasing UIDs in every snapshot
        uid_order = [seen[seq][b"UID"] for seq in sorted(seen)]
        assert uid_order == sorted(uid_order)
        pop = poplib.POP3(imap_server.host, pop_port, timeout=30)
        pop.user("alice@example.org")
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        assert count >= len(uid_order)
        pop.quit()
    stop.set()
    deliverer.join()
    # final state: everyone agrees
    store_uids = imap_server.store.account("alice@example.org").uids("INBOX")
    assert store_uids == sorted(delivered)
    a.noop()
    b.noop()
    final_a = a.fetch(a.search("ALL"), ["UID", "FLAGS"])
    final_b = b.fetch(b.search("ALL"), ["UID", "FLAGS"])
    assert sorted(final_a) == store_uids  # a uses UIDs as keys
    assert [v[b"UID"] for _, v in sorted(final_b.items())] == store_uids  # b: sequence order = UID order
    assert {uid: set(v[b"FLAGS"]) - {b"\\Recent"} for uid, v in final_a.items()} == \
        {v[b"UID"]: set(v[b"FLAGS"]) - {b"\\Recent"} for v in final_b.values()}
    assert {v[b"UID"] for v in final_b.values() if imapclient.FLAGGED in v[b"FLAGS"]} == flagged
    pop = poplib.POP3(imap_server.host, pop_port, timeout=30)
    pop.user("alice@example.org")
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == len(store_uids)
    pop.quit()
    a.logout()
    b.logout()
    for server in pop_servers:
        imap_server.loop.call_soon_threadsafe(server.close)
