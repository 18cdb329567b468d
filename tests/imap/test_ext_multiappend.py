"""MULTIAPPEND (RFC 3502), literal8 APPEND (RFC 3516 §4.4) and APPENDLIMIT (RFC 7889) against the real server."""

from __future__ import annotations

import imapclient
from hypothesis import given
from hypothesis import strategies as st

from appliance.imap.parser import Append, parse_command
from tests.imap import ext_server as peer
from tests.imap.conftest import PASSWORD, ImapServer, RawClient

ext_server = peer.ext_server  # the fixtures, by name
ext_raw = peer.ext_raw
MSG1 = b"From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n"
MSG2 = b"From: b@example.org\r\nSubject: two\r\n\r\nsecond\r\n"


def _literal(data: bytes, prefix: bytes = b"") -> bytes:
    return prefix + b"{%d+}\r\n" % len(data) + data


def test_capabilities_announce_multiappend_and_appendlimit(ext_raw: RawClient) -> None:
    caps = ext_raw.command("c", "CAPABILITY")[0].split()
    assert b"MULTIAPPEND" in caps
    assert any(c.startswith(b"APPENDLIMIT=") and int(c.split(b"=")[1]) > 0 for c in caps)


def test_multiappend_stores_all_messages_with_their_flags(ext_server: ImapServer, ext_raw: RawClient) -> None:
    # RFC 3502 §6.3.11 example shape: APPEND mailbox (flags) msg (flags) date msg
    cmd = b"APPEND INBOX (\\Seen) " + _literal(MSG1) + b' (\\Flagged) "14-Jul-2023 08:00:00 +0200" ' + _literal(MSG2)
    reply = ext_raw.command("a1", cmd)
    assert reply[-1].startswith(b"a1 OK [APPENDUID "), reply
    assert reply[-1].split()[4] == b"1:2]"
    lines = ext_raw.command("f", "EXAMINE INBOX")
    assert b"* 2 EXISTS\r\n" in lines
    fetched = b"".join(ext_raw.command("f2", "FETCH 1:2 (FLAGS INTERNALDATE BODY.PEEK[])"))
    assert b"(\\Seen" in fetched and b"\\Flagged" in fetched
    assert b'"14-Jul-2023 08:00:00 +0200"' in fetched
    assert MSG1 in fetched and MSG2 in fetched


def test_multiappend_is_all_or_nothing_on_quota(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_server.store.set_quota("alice@example.org", len(MSG1) + 10)  # the first fits, not both
    reply = ext_raw.command("a1", b"APPEND INBOX " + _literal(MSG1) + b" " + _literal(MSG2))
    assert reply[-1].startswith(b"a1 NO [OVERQUOTA]"), reply
    assert b"* 0 EXISTS\r\n" in ext_raw.command("s", "SELECT INBOX")


def test_multiappend_is_all_or_nothing_on_a_bad_message(ext_raw: RawClient) -> None:
    reply = ext_raw.command("a1", b"APPEND INBOX " + _literal(MSG1) + b" (\\Bogus) " + _literal(MSG2))
    assert reply[-1].startswith(b"a1 BAD"), reply
    reply = ext_raw.command("a2", b"APPEND INBOX " + _literal(MSG1) + b" " + _literal(b""))
    assert reply[-1].startswith(b"a2 NO"), reply
    assert b"* 0 EXISTS\r\n" in ext_raw.command("s", "SELECT INBOX")


def test_multiappend_to_a_missing_mailbox_says_trycreate(ext_raw: RawClient) -> None:
    reply = ext_raw.command("a1", b"APPEND Nowhere " + _literal(MSG1) + b" " + _literal(MSG2))
    assert reply[-1].startswith(b"a1 NO [TRYCREATE]"), reply


def test_literal8_append_keeps_nul_octets(ext_raw: RawClient) -> None:
    binary = b"From: a@example.org\r\nContent-Transfer-Encoding: binary\r\n\r\nnul\x00here\r\n"
    reply = ext_raw.command("a1", b"APPEND INBOX " + _literal(binary, b"~"))
    assert reply[-1].startswith(b"a1 OK [APPENDUID"), reply
    ext_raw.command("s", "SELECT INBOX")
    assert binary in b"".join(ext_raw.command("f", "FETCH 1 BODY.PEEK[]"))


def test_nul_in_a_plain_literal_is_refused(ext_raw: RawClient) -> None:
    reply = ext_raw.command("a1", b"APPEND INBOX " + _literal(b"Subject: x\r\n\r\nnul\x00\r\n"))
    assert reply[-1].startswith(b"a1 NO"), reply


def test_a_message_above_appendlimit_is_refused_before_it_is_sent(ext_raw: RawClient) -> None:
    caps = ext_raw.command("c", "CAPABILITY")[0].split()
    limit = int(next(c for c in caps if c.startswith(b"APPENDLIMIT=")).split(b"=")[1])
    ext_raw.send(b"a1 APPEND INBOX {%d}\r\n" % (limit + 1))  # synchronising: the server answers first
    reply = ext_raw.until("a1")
    assert reply[-1].startswith(b"a1 NO [TOOBIG]"), reply
    assert ext_raw.command("n", "NOOP")[-1].startswith(b"n OK")


def test_imapclient_multiappend(ext_server: ImapServer) -> None:
    client = imapclient.IMAPClient(ext_server.host, port=ext_server.port, ssl=False, timeout=20)
    client.login("alice@example.org", PASSWORD)
    assert client.has_capability("MULTIAPPEND")
    client.multiappend("Sent", [MSG1, {"msg": MSG2, "flags": [imapclient.SEEN]}])
    assert client.folder_status("Sent", ["MESSAGES"])[b"MESSAGES"] == 2
    client.logout()


_FLAGS = st.sampled_from([(), ("\\Seen",), ("\\Flagged", "$Label1")])


@given(st.lists(st.tuples(_FLAGS, st.binary(min_size=1, max_size=60), st.booleans()), min_size=1, max_size=5))
def test_parser_reads_every_message_of_a_multiappend(messages: list[tuple[tuple[str, ...], bytes, bool]]) -> None:
    command = b"t APPEND Drafts"
    for flags, data, binary in messages:
        command += b" (" + " ".join(flags).encode() + b") " + _literal(data, b"~" if binary else b"")
    parsed = parse_command(command)
    assert isinstance(parsed, Append)
    got = [(parsed.flags, parsed.message, parsed.binary)] + [(m.flags, m.message, m.binary) for m in parsed.more]
    assert got == messages
