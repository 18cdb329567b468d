"""IMAP4rev1 with Python's imaplib as the client (real sockets on loopback)."""

from __future__ import annotations

import imaplib
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.imap.conftest import PASSWORD, ImapServer

SIMPLE = b"From: Ann <ann@example.net>\r\nTo: alice@example.org\r\nSubject: hello\r\n" \
         b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <1@example.net>\r\n\r\nHello world\r\n"
MULTI = (b"From: bob@example.net\r\nTo: alice@example.org\r\nSubject: =?UTF-8?Q?R=C3=A9sum=C3=A9?=\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
         b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"Caf=C3=A9 au lait\r\n"
         b"--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; "
         b"filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n")


def test_login_select_fetch_roundtrip(imap_server: ImapServer) -> None:
    imap_server.deliver(SIMPLE)
    conn = imap_server.imaplib()
    typ, data = conn.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    assert conn.untagged_responses.get("UIDVALIDITY")
    typ, data = conn.fetch("1", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == SIMPLE
    assert f"RFC822.SIZE {len(SIMPLE)}".encode() in data[0][0]
    assert b"\\Recent" in data[0][0] and b"\\Seen" not in data[0][0]
    # BODY[] without PEEK sets \Seen (RFC 3501 §6.4.5) and reports the new flags
    typ, data = conn.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"Hello world\r\n"
    assert b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in data)
    typ, data = conn.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    conn.logout()


def test_wrong_password_and_unknown_user_are_refused(imap_server: ImapServer) -> None:
    conn = imaplib.IMAP4(imap_server.host, imap_server.port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        conn.login("alice@example.org", "wrong")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        conn.login("nobody@example.org", PASSWORD)
    conn.login("alice@example.org", PASSWORD)
    conn.logout()


def test_authenticate_plain(imap_server: ImapServer) -> None:
    conn = imaplib.IMAP4(imap_server.host, imap_server.port)
    typ, _ = conn.authenticate("PLAIN", lambda _: f"\0alice@example.org\0{PASSWORD}".encode())
    assert typ == "OK"
    assert conn.state == "AUTH"
    conn.logout()


def test_plaintext_login_refused_before_tls(strict_imap_server: ImapServer) -> None:
    conn = imaplib.IMAP4(strict_imap_server.host, strict_imap_server.port)
    assert "LOGINDISABLED" in conn.capabilities and "STARTTLS" in conn.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        conn.login("alice@example.org", PASSWORD)
    conn.starttls(strict_imap_server.client_context())
    assert "AUTH=PLAIN" in conn.capabilities and "STARTTLS" not in conn.capabilities
    assert conn.login("alice@example.org", PASSWORD)[0] == "OK"
    conn.logout()


def test_implicit_tls(strict_imap_server: ImapServer) -> None:
    conn = imaplib.IMAP4_SSL(strict_imap_server.host, strict_imap_server.tls_port,
                             ssl_context=strict_imap_server.client_context())
    assert "AUTH=PLAIN" in conn.capabilities
    conn.login("alice@example.org", PASSWORD)
    assert conn.select("INBOX")[0] == "OK"
    conn.logout()


def test_list_special_use_and_children(imap_server: ImapServer) -> None:
    conn = imap_server.imaplib()
    conn.create("Projects/2024")
    typ, data = conn.list()
    assert typ == "OK"
    lines = {line.decode() for line in data}
    assert '(\\HasNoChildren) "/" INBOX' in lines
    assert '(\\HasNoChildren \\Sent) "/" Sent' in lines
    assert '(\\HasNoChildren \\Trash) "/" Trash' in lines
    assert '(\\Noselect \\HasChildren) "/" Projects' in lines  # a parent that exists only by its child
    assert '(\\HasNoChildren) "/" Projects/2024' in lines
    typ, data = conn.list('""', "%")
    assert not any(b"Projects/2024" in line for line in data)
    typ, data = conn.list("Projects/", "%")
    assert [line.decode() for line in data] == ['(\\HasNoChildren) "/" Projects/2024']
    typ, data = conn.list('""', '""')
    assert data == [b'(\\Noselect) "/" ""']
    typ, data = conn.lsub('""', "*")
    assert sorted(data) == sorted([b'(\\Archive) "/" Archive', b'(\\Drafts) "/" Drafts', b'(\\Junk) "/" Junk',
                                   b'(\\Sent) "/" Sent', b'(\\Trash) "/" Trash'])
    conn.subscribe("Projects/2024")
    typ, data = conn.lsub('""', "Projects/*")
    assert data == [b'() "/" Projects/2024']
    conn.unsubscribe("Projects/2024")
    typ, data = conn.lsub('""', "*")
    assert not any(b"Projects/2024" in line for line in data)
    conn.logout()


def test_create_rename_delete_status(imap_server: ImapServer) -> None:
    conn = imap_server.imaplib()
    assert conn.create("Work")[0] == "OK"
    typ, data = conn.create("Work")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    assert conn.create("inbox")[0] == "NO"
    conn.append("Work", None, None, SIMPLE)
    assert conn.rename("Work", "Job")[0] == "OK"
    typ, data = conn.status("Job", "(MESSAGES UIDNEXT UNSEEN RECENT)")
    assert data == [b"Job (MESSAGES 1 RECENT 1 UIDNEXT 2 UNSEEN 1)"]
    typ, data = conn.status("Work", "(MESSAGES)")
    assert typ == "NO" and b"doesn't exist" in data[0]
    assert conn.delete("Job")[0] == "OK"
    assert conn.delete("INBOX")[0] == "NO"
    typ, data = conn.select("Job")
    assert typ == "NO"
    conn.logout()


def test_unicode_mailbox_names_use_modified_utf7(imap_server: ImapServer) -> None:
    conn = imap_server.imaplib()
    # RFC 3501 §5.1.3 example: "~peter/mail/台北/日本語"
    name = "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert conn.create(f'"{name}"')[0] == "OK"
    typ, data = conn.list("~peter/mail/", "*")
    assert any(line.decode().endswith(name) for line in data)
    folders = {f.name for f in imap_server.store.account("alice@example.org").folders()}
    assert "~peter/mail/台北/日本語" in folders
    typ, data = conn.create('"bad&name"')  # not modified UTF-7: NO, as Dovecot, and nothing created
    assert typ == "NO" and b"mUTF-7" in data[0]
    assert not any("bad" in f.name for f in imap_server.store.account("alice@example.org").folders())
    conn.logout()


def test_append_keeps_flags_and_internal_date(imap_server: ImapServer) -> None:
    conn = imap_server.imaplib()
    when = datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-7)))
    typ, data = conn.append("Sent", "(\\Seen $Forwarded)", imaplib.Time2Internaldate(when), SIMPLE)
    assert typ == "OK"
    match = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert match and int(match.group(2)) == 1
    conn.select("Sent")
    typ, data = conn.fetch("1", "(FLAGS INTERNALDATE)")
    assert b'INTERNALDATE "04-Mar-2021 05:06:07 -0700"' in data[0]
    assert b"$Forwarded" in data[0] and b"\\Seen" in data[0]
    typ, data = conn.append("Nope", None, None, SIMPLE)
    assert typ == "NO" and b"TRYCREATE" in data[0]
    conn.logout()


def test_fetch_sections_bodystructure_envelope(imap_server: ImapServer) -> None:
    imap_server.deliver(MULTI)
    conn = imap_server.imaplib()
    conn.select("INBOX", readonly=True)
    typ, data = conn.fetch("1", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (Subject)]"
                                " BODY.PEEK[]<0.4>)")
    parts = {re.search(rb"(BODY\[[^\]]*\](?:<\d+>)?) \{", item[0]).group(1): item[1]
             for item in data if isinstance(item, tuple)}
    assert parts[b"BODY[1]"] == b"Caf=C3=A9 au lait"
    assert parts[b"BODY[2.MIME]"].startswith(b"Content-Type: application/pdf")
    assert parts[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: =?UTF-8?Q?R=C3=A9sum=C3=A9?=\r\n\r\n"
    assert parts[b"BODY[]<0>"] == b"From"
    typ, data = conn.fetch("1", "(BODYSTRUCTURE ENVELOPE)")
    text = data[0].decode()
    assert '("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 17 0' in text
    assert '("application" "pdf" ("name" "a.pdf") NIL NIL "base64" 12 NIL ("attachment" ("filename" "a.pdf"))' \
        in text
    assert ' "mixed" ("boundary" "b1") NIL NIL NIL)' in text
    assert 'ENVELOPE (NIL "=?UTF-8?Q?R=C3=A9sum=C3=A9?=" ((NIL NIL "bob" "example.net"))' in text
    # EXAMINE is read-only: a non-PEEK fetch does not set \Seen
    conn.fetch("1", "(BODY[1])")
    typ, data = conn.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    conn.logout()


def test_search_keys(imap_server: ImapServer) -> None:
    imap_server.deliver(SIMPLE, internal_date=datetime(2020, 1, 10, tzinfo=UTC))
    imap_server.deliver(MULTI, flags=["\\Flagged"], internal_date=datetime(2020, 6, 1, tzinfo=UTC))
    imap_server.deliver(b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n", flags=["\\Seen", "work"])
    conn = imap_server.imaplib()
    conn.select("INBOX")

    def search(*criteria: str, charset: str | None = None) -> list[int]:
        typ, data = conn.search(charset, *criteria)
        assert typ == "OK", data
        return [int(x) for x in data[0].split()]

    assert search("ALL") == [1, 2, 3]
    assert search("FLAGGED") == [2]
    assert search("UNSEEN") == [1, 2]
    assert search("KEYWORD", "work") == [3]
    assert search("UNKEYWORD", "work") == [1, 2]
    assert search("LARGER", "4000") == [3]
    assert search("SMALLER", "4000") == [1, 2]
    assert search("FROM", '"ann@"') == [1]
    assert search("BODY", "lait") == [2]
    assert search("TEXT", "Hello") == [1]
    assert search("HEADER", "Message-ID", "<1@example.net>") == [1]
    assert search("BEFORE", "1-Feb-2020") == [1]
    assert search("SINCE", "1-Feb-2020") == [2, 3]
    assert search("ON", "10-Jan-2020") == [1]
    assert search("SENTBEFORE", "1-Jan-1995") == [1, 2, 3]  # no Date: header counts as 1970 (as Dovecot)
    assert search("SENTSINCE", "1-Jan-1995") == []
    assert search("OR", "FLAGGED", "KEYWORD", "work") == [2, 3]
    assert search("NOT", "FLAGGED") == [1, 3]
    assert search("2:*") == [2, 3]
    assert search("UID", "1,3") == [1, 3]
    assert search("(OR SEEN FLAGGED)", "SMALLER", "4000") == [2]
    assert search("NEW") == [1, 2]
    assert search("RECENT") == [1, 2, 3]
    assert search("OLD") == []
    conn.uid("STORE", "2", "+FLAGS", "(\\Seen)")
    typ, data = conn.uid("SEARCH", "SEEN")
    assert data == [b"2 3"]
    # charset: UTF-8 search string as a literal
    conn.literal = "Résumé".encode()
    typ, data = conn.search("UTF-8", "SUBJECT")
    assert data == [b"2"]
    typ, data = conn.search("KOI8-R", "SUBJECT", "x")
    assert typ == "OK"  # any charset Python knows
    typ, data = conn._simple_command("SEARCH", "CHARSET", "X-NO-SUCH", "ALL")
    assert typ == "NO" and b"BADCHARSET" in conn.untagged_responses.get("NO", [b""])[-1] + b"".join(data)
    conn.logout()


def test_store_all_forms(imap_server: ImapServer) -> None:
    for _ in range(3):
        imap_server.deliver(SIMPLE)
    conn = imap_server.imaplib()
    conn.select("INBOX")
    typ, data = conn.store("1:2", "+FLAGS", "(\\Seen \\Flagged)")
    assert [d.split(b" (", 1)[1] for d in data] == [b"FLAGS (\\Flagged \\Seen \\Recent))"] * 2
    typ, data = conn.store("2", "-FLAGS", "\\Flagged")
    assert data == [b"2 (FLAGS (\\Seen \\Recent))"]
    typ, data = conn.store("3", "FLAGS", "(custom \\Draft)")
    assert data == [b"3 (FLAGS (\\Draft \\Recent custom))"]
    typ, data = conn.store("1:*", "+FLAGS.SILENT", "(\\Answered)")
    assert data == [None]
    typ, data = conn.uid("STORE", "3", "-FLAGS.SILENT", "(custom)")
    typ, data = conn.fetch("1:3", "(FLAGS)")
    assert data == [b"1 (FLAGS (\\Answered \\Flagged \\Seen \\Recent))", b"2 (FLAGS (\\Answered \\Seen \\Recent))",
                    b"3 (FLAGS (\\Answered \\Draft \\Recent))"]
    with pytest.raises(imaplib.IMAP4.error, match="Invalid system flag"):
        conn.store("1", "+FLAGS", "(\\Bogus)")
    with pytest.raises(imaplib.IMAP4.error, match="Invalid messageset"):
        conn.store("9", "+FLAGS", "(\\Seen)")
    conn.logout()


def test_copy_move_expunge_uidplus(imap_server: ImapServer) -> None:
    for _ in range(4):
        imap_server.deliver(SIMPLE)
    conn = imap_server.imaplib()
    conn.select("INBOX")
    typ, data = conn.copy("1:2", "Archive")
    assert typ == "OK" and re.search(rb"\[COPYUID \d+ 1:2 1:2\]", data[0])
    typ, data = conn.uid("MOVE", "3", "Archive")
    assert typ == "OK"
    assert conn.untagged_responses.pop("EXPUNGE") == [b"3"]
    typ, data = conn.copy("1", "Nope")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    conn.store("1:2", "+FLAGS", "(\\Deleted)")
    typ, data = conn.uid("EXPUNGE", "2")  # RFC 4315: only UID 2, though 1 is \Deleted too
    assert typ == "OK"
    assert conn.untagged_responses.pop("EXPUNGE") == [b"2"]
    typ, data = conn.expunge()
    assert data == [b"1"]
    typ, data = conn.fetch("1:*", "(UID)")
    assert data == [b"1 (UID 4)"]
    assert imap_server.store.account("alice@example.org").uids("Archive") == [1, 2, 3]
    conn.close()
    conn.logout()


def test_close_expunges_silently_but_unselect_does_not(imap_server: ImapServer) -> None:
    for _ in range(2):
        imap_server.deliver(SIMPLE, flags=["\\Deleted"])
    conn = imap_server.imaplib()
    conn.select("INBOX")
    conn.unselect()
    assert len(imap_server.store.account("alice@example.org").uids("INBOX")) == 2
    conn.select("INBOX")
    typ, data = conn.close()
    assert typ == "OK" and "EXPUNGE" not in conn.untagged_responses
    assert imap_server.store.account("alice@example.org").uids("INBOX") == []
    conn.logout()


def test_other_session_sees_changes(imap_server: ImapServer) -> None:
    imap_server.deliver(SIMPLE)
    a = imap_server.imaplib()
    b = imap_server.imaplib()
    a.select("INBOX")
    b.select("INBOX")
    b.untagged_responses.clear()
    a.store("1", "+FLAGS", "(\\Flagged)")
    imap_server.deliver(SIMPLE)
    typ, _ = b.noop()
    assert b.untagged_responses.pop("EXISTS") == [b"2"]
    assert b.untagged_responses.pop("FETCH") == [b"1 (FLAGS (\\Flagged))"]
    a.store("1", "+FLAGS", "(\\Deleted)")
    a.expunge()
    b.noop()
    assert b.untagged_responses.pop("EXPUNGE") == [b"1"]
    typ, data = b.fetch("1", "(UID)")
    assert data == [b"1 (UID 2)"]
    a.logout()
    b.logout()


def test_idle_pushes_new_mail(imap_server: ImapServer) -> None:
    conn = imap_server.imaplib()
    conn.select("INBOX")
    tag = conn._new_tag()
    conn.send(tag + b" IDLE\r\n")
    assert conn.readline().startswith(b"+ ")
    imap_server.deliver(SIMPLE)
    start = time.monotonic()
    line = conn.readline()
    assert line == b"* 1 EXISTS\r\n"
    assert time.monotonic() - start < 10
    assert conn.readline() == b"* 1 RECENT\r\n"
    conn.send(b"DONE\r\n")
    assert conn.readline() == tag + b" OK Idle completed.\r\n"
    conn.logout()


def test_commands_refused_in_wrong_state(imap_server: ImapServer) -> None:
    conn = imaplib.IMAP4(imap_server.host, imap_server.port)
    conn.state = "AUTH"  # let imaplib send SELECT before LOGIN
    with pytest.raises(imaplib.IMAP4.error, match="authenticate first"):
        conn.select("INBOX")
    conn.state = "NONAUTH"
    conn.login("alice@example.org", PASSWORD)
    conn.state = "SELECTED"  # let imaplib send FETCH without a mailbox
    with pytest.raises(imaplib.IMAP4.error, match="No mailbox selected"):
        conn.fetch("1", "(FLAGS)")
    conn.state = "AUTH"
    conn.logout()


def test_namespace_id_enable_capability(imap_server: ImapServer) -> None:
    conn = imap_server.imaplib()
    typ, data = conn.namespace()
    assert data == [b'(("" "/")) NIL NIL']
    typ, data = conn.xatom("ID", '("name" "imaplib")')
    assert typ == "OK" and b"Mailfleet" in conn.untagged_responses["ID"][0]
    typ, data = conn.enable("CONDSTORE")
    assert typ == "OK" and conn.untagged_responses["ENABLED"] == [b"CONDSTORE"]
    typ, data = conn.capability()
    caps = data[0].split()
    for cap in (b"IMAP4rev1", b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"ID", b"ENABLE", b"LITERAL+",
                b"SPECIAL-USE", b"CHILDREN", b"UNSELECT", b"CONDSTORE"):
        assert cap in caps
    conn.logout()


def test_idle_sees_delivery_from_another_process(imap_server: ImapServer) -> None:
    """Another process (an importer, a second server) delivers: IDLE notices it at its next poll."""
    import subprocess
    import sys

    conn = imap_server.imaplib()
    conn.select("INBOX")
    tag = conn._new_tag()
    conn.send(tag + b" IDLE\r\n")
    assert conn.readline().startswith(b"+ ")
    code = ("import sys; from pathlib import Path; from appliance.store import MailStore; "
            "MailStore(Path(sys.argv[1])).deliver('alice@example.org', b'Subject: x\\r\\n\\r\\nfrom afar\\r\\n')")
    subprocess.run([sys.executable, "-c", code, str(imap_server.store.root)], check=True, timeout=60)
    assert conn.readline() == b"* 1 EXISTS\r\n"
    conn.send(b"DONE\r\n")
    while not (line := conn.readline()).startswith(tag):
        pass
    assert b"OK" in line
    typ, data = conn.fetch("1", "(BODY.PEEK[TEXT])")
    assert data[0][1] == b"from afar\r\n"
    conn.logout()
