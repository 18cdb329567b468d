"""PREVIEW (RFC 8970) against the real server, and the preview text itself."""

from __future__ import annotations

import base64

import imapclient
from hypothesis import given
from hypothesis import strategies as st

from appliance.imap.parser import parse_command
from appliance.imap.preview import MAX_CHARS, preview_text
from tests.imap import ext_server as peer
from tests.imap.conftest import PASSWORD, ImapServer, RawClient

ext_server = peer.ext_server  # the fixtures, by name
ext_raw = peer.ext_raw

PLAIN = b"From: a@example.org\r\nSubject: lunch\r\n\r\nAre we   still on\r\nfor lunch?\r\n> old quoted text\r\n"
ALTERNATIVE = (b"Subject: html\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n"
               b"--x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
               b"<html><style>p {}</style><p>Gr&uuml;&szlig;e <b>aus</b> K\xc3\xb6ln</p></html>\r\n--x--\r\n")


def test_preview_is_announced(ext_raw: RawClient) -> None:
    assert b"PREVIEW" in ext_raw.command("c", "CAPABILITY")[0].split()


def test_fetch_preview_of_a_plain_message(ext_server: ImapServer, ext_raw: RawClient) -> None:
    # RFC 8970 §3 example shape: * 1 FETCH (PREVIEW "...")
    ext_server.deliver(PLAIN)
    ext_raw.command("s", "SELECT INBOX")
    reply = ext_raw.command("f", "FETCH 1 (PREVIEW)")
    assert reply[0] == b'* 1 FETCH (PREVIEW "Are we still on for lunch?")\r\n'
    assert ext_raw.command("f2", "FETCH 1 (PREVIEW (LAZY) FLAGS)")[0].startswith(
        b'* 1 FETCH (PREVIEW "Are we still on for lunch?" FLAGS (')
    assert b"\\Seen" not in ext_raw.command("f3", "FETCH 1 FLAGS")[0]  # PREVIEW does not set \Seen


def test_html_only_message_and_utf8_preview(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_server.deliver(ALTERNATIVE)
    ext_raw.command("s", "SELECT INBOX")
    expected = "Grüße aus Köln".encode()
    assert ext_raw.command("f", "FETCH 1 PREVIEW")[0] == b"* 1 FETCH (PREVIEW {%d}\r\n%s)\r\n" % (
        len(expected), expected)


def test_preview_is_cached_in_the_store(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_server.deliver(PLAIN)
    ext_raw.command("s", "SELECT INBOX")
    ext_raw.command("f", "FETCH 1 PREVIEW")
    account = ext_server.store.account("alice@example.org")
    assert account.previews("INBOX", [1]) == {1: "Are we still on for lunch?"}


def test_preview_with_changedsince_is_still_a_modifier(ext_server: ImapServer, ext_raw: RawClient) -> None:
    ext_server.deliver(PLAIN)
    ext_raw.command("s", "SELECT INBOX")
    reply = ext_raw.command("f", "FETCH 1 PREVIEW (CHANGEDSINCE 1)")
    assert b'* 1 FETCH (PREVIEW "Are we still on for lunch?" MODSEQ (2))\r\n' in reply, reply


def test_imapclient_fetches_preview(ext_server: ImapServer) -> None:
    ext_server.deliver(PLAIN)
    client = imapclient.IMAPClient(ext_server.host, port=ext_server.port, ssl=False, timeout=20)
    client.login("alice@example.org", PASSWORD)
    client.select_folder("INBOX", readonly=True)
    assert client.fetch([1], ["PREVIEW"])[1][b"PREVIEW"] == b"Are we still on for lunch?"
    client.logout()


def test_preview_skips_attachments_and_decodes_base64() -> None:
    body = base64.b64encode("Bonjour à tous".encode("iso-8859-1"))
    message = (b"Content-Type: multipart/mixed; boundary=m\r\n\r\n"
               b"--m\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnot this\r\n"
               b"--m\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + body + b"\r\n--m--\r\n")
    assert preview_text(message) == "Bonjour à tous"
    assert preview_text(b"Content-Type: image/png\r\n\r\nPNG") == ""


@given(st.binary(max_size=2000))
def test_any_message_gets_a_short_preview(data: bytes) -> None:
    text = preview_text(data)
    assert len(text) <= MAX_CHARS
    assert "\r" not in text and "\n" not in text


@given(st.booleans())
def test_parser_reads_preview_with_and_without_lazy(lazy: bool) -> None:
    item = parse_command(b"a FETCH 1:* (UID PREVIEW%s)" % (b" (LAZY)" if lazy else b"")).items[1]  # type: ignore[attr-defined]
    assert (item.name, item.peek) == ("PREVIEW", lazy)
