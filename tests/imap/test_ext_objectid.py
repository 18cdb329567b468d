"""OBJECTID (RFC 8474): MAILBOXID, EMAILID and THREADID against the real server, and their storage."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import imapclient

from appliance.store import MailStore
from tests.imap import ext_server as peer
from tests.imap.conftest import PASSWORD, ImapServer, RawClient

ext_server = peer.ext_server  # the fixtures, by name
ext_raw = peer.ext_raw
MSG = b"From: a@example.org\r\nSubject: ids\r\n\r\nbody\r\n"
_ID = rb"[A-Za-z0-9_-]{1,255}"


def _mailbox_id(lines: list[bytes]) -> bytes:
    found = [m.group(1) for line in lines if (m := re.search(rb"\[MAILBOXID \((" + _ID + rb")\)\]", line))]
    assert len(found) == 1, lines
    return found[0]


def _status_id(client: RawClient, name: str) -> bytes:
    line = client.command("st", f"STATUS {name} (MAILBOXID)")[0]
    match = re.match(rb"\* STATUS \S+ \(MAILBOXID \((" + _ID + rb")\)\)\r\n$", line)
    assert match, line
    return match.group(1)


def _email_ids(client: RawClient, sequence: str = "1:*") -> list[bytes]:
    lines = client.command("f", f"FETCH {sequence} (EMAILID THREADID)")
    ids = [re.match(rb"\* \d+ FETCH \(EMAILID \((" + _ID + rb")\) THREADID NIL\)", line) for line in lines[:-1]]
    assert all(ids) and lines[-1].startswith(b"f OK"), lines
    return [m.group(1) for m in ids if m]


def test_objectid_is_announced(ext_raw: RawClient) -> None:
    assert b"OBJECTID" in ext_raw.command("c", "CAPABILITY")[0].split()


def test_mailboxid_is_stable_across_rename_and_new_after_recreate(ext_raw: RawClient) -> None:
    # RFC 8474 §4.1 example: CREATE answers the id, RENAME keeps it, a new mailbox of the old name has another
    created = _mailbox_id(ext_raw.command("c1", "CREATE foo"))
    assert _mailbox_id(ext_raw.command("s", "SELECT foo")) == created
    assert _status_id(ext_raw, "foo") == created
    ext_raw.command("u", "UNSELECT")
    assert ext_raw.command("r", "RENAME foo bar")[-1].startswith(b"r OK")
    assert _status_id(ext_raw, "bar") == created
    again = _mailbox_id(ext_raw.command("c2", "CREATE foo"))
    assert again != created
    assert _status_id(ext_raw, "INBOX") not in (created, again)


def test_list_status_returns_mailboxid(ext_raw: RawClient) -> None:
    created = _mailbox_id(ext_raw.command("c1", "CREATE Projects"))
    lines = ext_raw.command("l", 'LIST "" "Projects" RETURN (STATUS (MAILBOXID))')
    assert b"* STATUS Projects (MAILBOXID (" + created + b"))\r\n" in lines


def test_emailid_is_stable_unique_and_follows_move(ext_server: ImapServer, ext_raw: RawClient) -> None:
    for _ in range(3):
        ext_server.deliver(MSG)
    ext_raw.command("s", "SELECT INBOX")
    ids = _email_ids(ext_raw)
    assert len(set(ids)) == 3
    assert _email_ids(ext_raw) == ids  # asked again: the same
    other = RawClient(ext_server.host, ext_server.port)
    other.login()
    other.command("s", "EXAMINE INBOX")
    assert _email_ids(other) == ids  # another session sees the same ids
    other.close()
    assert ext_raw.command("m", "MOVE 2 Archive")[-1].startswith(b"m OK")
    ext_raw.command("s2", "SELECT Archive")
    assert _email_ids(ext_raw) == [ids[1]]  # RFC 8474 §5.1: MOVE keeps the EMAILID


def test_emailid_survives_a_restart(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "mail")
    store.deliver("alice@example.org", MSG)
    ids = store.account("alice@example.org").email_ids("INBOX", [1])
    store.close()
    store = MailStore(tmp_path / "mail")
    assert store.account("alice@example.org").email_ids("INBOX", [1]) == ids
    store.close()


def test_an_index_without_the_columns_gains_them(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "mail")
    store.deliver("alice@example.org", MSG)
    path = store.account_path("alice@example.org")
    store.close()
    with sqlite3.connect(path / "mailfleet.sqlite") as db:  # an index written before OBJECTID and PREVIEW
        db.execute("ALTER TABLE messages DROP COLUMN emailid")
        db.execute("ALTER TABLE messages DROP COLUMN preview")
    store = MailStore(tmp_path / "mail")
    account = store.account("alice@example.org")
    assert set(account.email_ids("INBOX", [1])) == {1}
    assert account.previews("INBOX", [1]) == {1: None}
    store.close()


def test_imapclient_reads_objectids(ext_server: ImapServer) -> None:
    ext_server.deliver(MSG)
    client = imapclient.IMAPClient(ext_server.host, port=ext_server.port, ssl=False, timeout=20)
    client.login("alice@example.org", PASSWORD)
    assert client.has_capability("OBJECTID")
    client.select_folder("INBOX")
    data = client.fetch([1], ["EMAILID", "THREADID"])[1]
    assert re.fullmatch(_ID, data[b"EMAILID"][0])
    assert data[b"THREADID"] is None
    client.logout()
