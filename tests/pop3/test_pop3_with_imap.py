"""POP3 and IMAP on one store: the same message identity (UIDVALIDITY + UID) and the same flags."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import re

from appliance.imap.server import start_imap

from .conftest import PASSWORD


async def test_uidl_matches_imap_uid_and_retr_sets_seen_for_imap(pop3):
    uids = [pop3.deliver(f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()) for i in range(3)]
    imap_servers = await start_imap([("127.0.0.1", 0)], [], pop3.store, pop3.authenticator, None,
                                    "imap.example.org", True)
    imap_port = imap_servers[0].sockets[0].getsockname()[1]

    def clients():
        imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
        imap.login("alice@example.org", PASSWORD)
        status = imap.status("INBOX", "(UIDVALIDITY)")[1][0].decode()
        uidvalidity = int(re.search(r"UIDVALIDITY (\d+)", status).group(1))
        imap.select("INBOX")
        fetched = imap.uid("FETCH", "1:*", "(UID)")[1]
        imap_uids = [int(re.search(rb"UID (\d+)", line).group(1)) for line in fetched]
        imap.uid("STORE", str(imap_uids[0]), "+FLAGS", r"(\Deleted)")
        imap.expunge()

        pop = poplib.POP3("127.0.0.1", pop3.port, timeout=10)
        pop.user("alice@example.org")
        pop.pass_(PASSWORD)
        uidl = [line.split()[1].decode() for line in pop.uidl()[1]]
        pop.retr(1)
        pop.quit()

        imap.noop()
        flags = {}
        for line in imap.uid("FETCH", f"{imap_uids[1]}:{imap_uids[2]}", "(FLAGS)")[1]:
            uid = re.search(rb"UID (\d+)", line)  # unsolicited FETCH updates (no UID) are skipped
            if uid:
                flags[int(uid.group(1))] = re.search(rb"FLAGS \(([^)]*)\)", line).group(1).split()
        imap.logout()
        return uidvalidity, imap_uids, uidl, flags

    try:
        uidvalidity, imap_uids, uidl, flags = await asyncio.to_thread(clients)
    finally:
        for server in imap_servers:
            server.close()
    assert imap_uids == uids
    # The message IMAP expunged is gone for POP3; the others carry IMAP's UID and UIDVALIDITY.
    assert uidl == [f"{uid:08X}{uidvalidity:08X}" for uid in uids[1:]]
    assert {uid: b"\\Seen" in f for uid, f in flags.items()} == {uids[1]: True, uids[2]: False}
