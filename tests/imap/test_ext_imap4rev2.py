"""IMAP4rev2 (RFC 9051) beside IMAP4rev1, and UTF8=ACCEPT (RFC 6855), against the real server."""

from __future__ import annotations

import imaplib

from tests.imap import ext_server as peer
from tests.imap.conftest import PASSWORD, ImapServer, RawClient

ext_server = peer.ext_server  # the fixtures, by name
ext_raw = peer.ext_raw
MSG = b"From: a@example.org\r\nSubject: rev2\r\n\r\nbody\r\n"


def test_both_revisions_are_announced_before_and_after_login(ext_server: ImapServer) -> None:
    client = RawClient(ext_server.host, ext_server.port)
    assert b" IMAP4rev1 " in client.greeting and b" IMAP4rev2" in client.greeting
    client.login()
    caps = client.command("c", "CAPABILITY")[0].split()
    assert {b"IMAP4rev1", b"IMAP4rev2", b"UTF8=ACCEPT"} <= set(caps)
    client.close()


def test_rev1_session_is_unchanged(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_server.deliver(MSG)
    assert b"* 1 RECENT\r\n" in ext_raw.command("s", "SELECT INBOX")
    assert ext_raw.command("f", "SEARCH ALL")[0] == b"* SEARCH 1\r\n"


def test_enable_imap4rev2_changes_the_responses(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_server.deliver(MSG)
    ext_server.deliver(MSG, flags=["\\Deleted"])
    assert ext_raw.command("e", "ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    assert ext_raw.command("e2", "ENABLE IMAP4rev2")[0] == b"* ENABLED\r\n"  # RFC 5161 §3.1: only new ones
    assert ext_raw.command("st", "STATUS INBOX (MESSAGES DELETED SIZE)")[0] == (
        b"* STATUS INBOX (MESSAGES 2 SIZE %d DELETED 1)\r\n" % (2 * len(MSG)))
    selected = ext_raw.command("s", "SELECT INBOX")
    assert not any(line.endswith(b" RECENT\r\n") for line in selected), selected  # RFC 9051 appendix E
    assert ext_raw.command("f", "FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"  # no \Recent
    # RFC 9051 §7.3.4: SEARCH without RETURN answers with ESEARCH (ALL)
    assert ext_raw.command("g", "SEARCH ALL")[0] == b'* ESEARCH (TAG "g") ALL 1:2\r\n'
    assert ext_raw.command("h", "UID SEARCH DELETED")[0] == b'* ESEARCH (TAG "h") UID ALL 2\r\n'


def test_rev2_session_never_sees_recent(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_raw.command("e", "ENABLE IMAP4rev2")
    ext_raw.command("s", "SELECT INBOX")
    ext_server.deliver(MSG)  # arrives while selected: rev1 would get "* 1 RECENT" and \Recent
    assert ext_raw.command("n", "NOOP") == [b"* 1 EXISTS\r\n", b"n OK NOOP completed.\r\n"]
    assert ext_raw.command("f", "FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"
    assert ext_raw.command("t", "STORE 1 +FLAGS (\\Flagged)")[0] == b"* 1 FETCH (FLAGS (\\Flagged))\r\n"


def test_utf8_mailbox_names_after_enable(ext_raw: RawClient) -> None:
    assert ext_raw.command("c", 'CREATE "Gr&APYA3w-e"')[-1].startswith(b"c OK")  # "Größe" in modified UTF-7
    assert b'* LIST (\\HasNoChildren) "/" Gr&APYA3w-e\r\n' in ext_raw.command("l", 'LIST "" "Gr*"')
    assert ext_raw.command("e", "ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT\r\n"
    utf8 = "Größe".encode()
    expected = b'* LIST (\\HasNoChildren) "/" {%d}\r\n%s\r\n' % (len(utf8), utf8)
    assert expected in ext_raw.command("l2", 'LIST "" "Gr*"')
    assert ext_raw.command("s", b'SELECT {%d+}\r\n%s' % (len(utf8), utf8))[-1].startswith(b"s OK")


def test_utf8_append_data(ext_raw: RawClient) -> None:
    ext_raw.command("e", "ENABLE UTF8=ACCEPT")
    message = "From: jörg@example.org\r\nSubject: Grüße\r\n\r\nbody\r\n".encode()
    reply = ext_raw.command("a", b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (len(message), message))
    assert reply[-1].startswith(b"a OK [APPENDUID"), reply
    ext_raw.command("s", "SELECT INBOX")
    assert message in ext_raw.command("f", "FETCH 1 BODY.PEEK[]")[0]


def test_imaplib_enables_utf8_accept(ext_server: ImapServer) -> None:
    client = imaplib.IMAP4(ext_server.host, ext_server.port, timeout=20)
    client.login("alice@example.org", PASSWORD)
    assert client.enable("UTF8=ACCEPT")[0] == "OK"  # imaplib then speaks UTF-8 (Python's RFC 6855 support)
    assert client.create('"Größe"')[0] == "OK"
    typ, names = client.list('""', '"Gr*"')
    assert typ == "OK" and names[0] == (b'(\\HasNoChildren) "/" {7}', "Größe".encode()), names  # a literal
    # (not APPEND: imaplib puts "UTF8 (" and ")" inside the literal it announces, so the message would
    # start with them; test_utf8_append_data sends RFC 6855 §4 append data itself)
    assert client.select('"Größe"')[0] == "OK"
    client.logout()


def test_searchres_saves_a_result_for_later_commands(ext_server: ImapServer, ext_raw: RawClient) -> None:
    for flags in ([], ["\\Flagged"], [], ["\\Flagged"]):
        ext_server.deliver(MSG, flags=flags)
    assert b"SEARCHRES" in ext_raw.command("c", "CAPABILITY")[0].split()
    ext_raw.command("s", "SELECT INBOX")
    # RFC 5182 §2.1: SAVE alone sends no ESEARCH; "$" then names the saved messages (§3)
    assert ext_raw.command("a", "UID SEARCH RETURN (SAVE) FLAGGED") == [b"a OK Search completed.\r\n"]
    fetched = ext_raw.command("b", "FETCH $ (UID)")
    assert fetched[:-1] == [b"* 2 FETCH (UID 2)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert ext_raw.command("d", "SEARCH $ UID 3:4")[0] == b"* SEARCH 4\r\n"
    assert ext_raw.command("e", "UID STORE $ +FLAGS.SILENT (\\Seen)")[-1].startswith(b"e OK")
    assert ext_raw.command("f", "SEARCH SEEN")[0] == b"* SEARCH 2 4\r\n"
    reply = ext_raw.command("g", "SEARCH RETURN (SAVE MIN) FLAGGED")  # with MIN only the minimum is saved
    assert reply[0] == b'* ESEARCH (TAG "g") MIN 2\r\n'
    assert ext_raw.command("h", "UID FETCH $ UID")[:-1] == [b"* 2 FETCH (UID 2)\r\n"]


def test_searchres_is_empty_after_select(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_server.deliver(MSG)
    ext_raw.command("s", "SELECT INBOX")
    ext_raw.command("a", "SEARCH RETURN (SAVE) ALL")
    ext_raw.command("s2", "SELECT INBOX")
    assert ext_raw.command("b", "FETCH $ FLAGS") == [b"b OK Fetch completed.\r\n"]
    assert ext_raw.command("c", "UID SEARCH $")[0] == b"* SEARCH\r\n"
