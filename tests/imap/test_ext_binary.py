"""BINARY (RFC 3516): FETCH BINARY[]/BINARY.PEEK[]/BINARY.SIZE[] against the real server, and its parser."""

from __future__ import annotations

import base64
import quopri

import imapclient
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.imap.parser import ParseError, parse_command
from tests.imap import ext_server as peer
from tests.imap.conftest import PASSWORD, ImapServer, RawClient

ext_server = peer.ext_server  # the fixtures, by name
ext_raw = peer.ext_raw
PAYLOAD = bytes(range(256)) * 3
TEXT = "Grüße aus Köln = café\r\n".encode()
MESSAGE = (b"From: a@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           + quopri.encodestring(TEXT) +
           b"\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n") +
           b"--b\r\nContent-Type: application/x-odd\r\n\r\nbegin 644\r\n"
           b"--b\r\nContent-Type: application/x-odd\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644\r\n"
           b"--b--\r\n")


@pytest.fixture
def inbox(ext_server: ImapServer, ext_raw: RawClient) -> RawClient:
    ext_server.deliver(MESSAGE)
    ext_raw.command("s", "SELECT INBOX")
    return ext_raw


def test_binary_is_announced(ext_raw: RawClient) -> None:
    assert b"BINARY" in ext_raw.command("c", "CAPABILITY")[0].split()


def test_base64_part_is_served_decoded_as_literal8(inbox: RawClient) -> None:
    reply = inbox.command("f", "FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])")
    expected = b"* 1 FETCH (BINARY[2] ~{%d}\r\n" % len(PAYLOAD) + PAYLOAD + b" BINARY.SIZE[2] %d)\r\n" % len(PAYLOAD)
    assert reply[0] == expected
    assert reply[-1].startswith(b"f OK")


def test_quoted_printable_part_is_decoded(inbox: RawClient) -> None:
    reply = inbox.command("f", "FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")
    assert reply[0] == b"* 1 FETCH (BINARY[1] ~{%d}\r\n" % len(TEXT) + TEXT + b" BINARY.SIZE[1] %d)\r\n" % len(TEXT)


def test_partial_applies_to_the_decoded_content(inbox: RawClient) -> None:
    reply = inbox.command("f", "FETCH 1 BINARY.PEEK[2]<250.10>")
    assert reply[0] == b"* 1 FETCH (BINARY[2]<250> ~{10}\r\n" + PAYLOAD[250:260] + b")\r\n"


def test_whole_message_is_stored_bytes_when_nothing_is_encoded(ext_server: ImapServer, ext_raw: RawClient) -> None:
    plain = b"From: a@example.org\r\nSubject: plain\r\n\r\nJust text.\r\n"
    ext_server.deliver(plain)
    ext_raw.command("s", "SELECT INBOX")
    reply = ext_raw.command("f", "FETCH 1 BINARY.PEEK[]")
    assert reply[0] == b"* 1 FETCH (BINARY[] {%d}\r\n" % len(plain) + plain + b")\r\n"


def test_containers_have_their_encoded_parts_decoded(ext_server: ImapServer, ext_raw: RawClient) -> None:
    inner = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\nX-Keep: yes\r\n\r\naGk=\r\n"
    message = (b"Subject: mixed\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n" + inner
               + b"--z--\r\n")
    ext_server.deliver(message)
    ext_raw.command("s", "SELECT INBOX")
    decoded = b"Content-Type: text/plain\r\nX-Keep: yes\r\nContent-Transfer-Encoding: binary\r\n\r\nhi"
    expected = message.replace(inner, decoded + b"\r\n")  # that CRLF belongs to the delimiter
    reply = ext_raw.command("f", "FETCH 1 (BINARY.PEEK[] BINARY.SIZE[])")
    assert reply[0] == (b"* 1 FETCH (BINARY[] ~{%d}\r\n" % len(expected) + expected
                        + b" BINARY.SIZE[] %d)\r\n" % len(expected))


def test_unknown_encoding_fails_with_unknown_cte(inbox: RawClient) -> None:
    reply = inbox.command("f", "FETCH 1 BINARY.PEEK[4]")
    assert reply[-1].startswith(b"f NO [UNKNOWN-CTE]"), reply
    assert inbox.command("f2", "FETCH 1 BODY.PEEK[4]")[-1].startswith(b"f2 OK")  # BODY[] still works


def test_binary_without_peek_sets_seen(inbox: RawClient) -> None:
    reply = b"".join(inbox.command("f", "FETCH 1 BINARY[1]"))
    assert b"FLAGS (\\Seen" in reply
    assert b"\\Seen" in inbox.command("f2", "FETCH 1 FLAGS")[0]


def test_missing_part_is_empty(inbox: RawClient) -> None:
    assert inbox.command("f", "FETCH 1 BINARY.SIZE[9]")[0] == b"* 1 FETCH (BINARY.SIZE[9] 0)\r\n"


def test_imapclient_fetches_binary(ext_server: ImapServer) -> None:
    """imapclient (3.x) reads a literal8 as the text "~{n}", so this client test fetches a part that needs
    no decoding (a plain literal) and the size of one that does."""
    ext_server.deliver(MESSAGE)
    client = imapclient.IMAPClient(ext_server.host, port=ext_server.port, ssl=False, timeout=20)
    client.login("alice@example.org", PASSWORD)
    client.select_folder("INBOX", readonly=True)
    data = client.fetch([1], ["BINARY.PEEK[3]", "BINARY.SIZE[2]"])[1]
    assert data[b"BINARY[3]"] == b"begin 644"
    assert data[b"BINARY.SIZE[2]"] == len(PAYLOAD)
    client.logout()


@pytest.mark.parametrize("item", ["BINARY[HEADER]", "BINARY[1.]", "BINARY.SIZE[1]<0.1>", "BINARY[1.TEXT]"])
def test_bad_binary_sections_are_bad(item: str) -> None:
    with pytest.raises(ParseError):
        parse_command(f"a FETCH 1 {item}".encode())


@given(st.lists(st.integers(1, 50), max_size=4), st.booleans())
def test_parser_reads_any_binary_section(parts: list[int], peek: bool) -> None:
    spec = ".".join(map(str, parts))
    cmd = parse_command(f"a FETCH 1 (BINARY{'.PEEK' if peek else ''}[{spec}] BINARY.SIZE[{spec}])".encode())
    first, size = cmd.items  # type: ignore[attr-defined]
    assert (first.name, first.peek, first.section.parts) == ("BINARY", peek, tuple(parts))
    assert (size.name, size.section.spec) == ("BINARY.SIZE", spec)
