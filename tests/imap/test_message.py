"""MIME sections of nested messages (the cases imaptest's fetch-body-* scripts check), on the parser alone."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.imap.message import Message, parse_addresses
from appliance.imap.parser import Section
from appliance.store.fts import extract


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


MIXED = crlf("""From: user@domain.org
Date: Sat, 24 Mar 2007 23:00:00 +0200
Mime-Version: 1.0
Content-Type: multipart/mixed; boundary="foo
 bar"

Root MIME prologue

--foo bar
Content-Type: text/x-myown; charset=us-ascii

hello

--foo bar
Content-Type: message/rfc822

From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg
Content-Type: multipart/alternative; boundary="sub1"

Sub MIME prologue
--sub1
Content-Type: text/html

<p>Hello world</p>

--sub1
Content-Type: text/plain

Hello another world

--sub1--
Sub MIME epilogue

--foo bar--
Root MIME epilogue

""")

DIGEST = crlf(("""From: user@domain.org
Content-Type: message/rfc822

From: sub@domain.org
Subject: submsg
Content-Type: multipart/digest; boundary="foo"

prologue

--foo<SP>

From: m1@example.com
Subject: m1

m1 body

--foo<SP>
X-Mime: m2 header

From: m2@example.com
Subject: m2

m2 body

--foo--

epilogue

""").replace("<SP>", " "))  # delimiter lines with trailing white space (RFC 2046 §5.1.1)

NESTED = crlf("""From: user@domain.org
Content-Type: message/rfc822

From: user2@domain.org
Content-Type: message/rfc822

From: sub@domain.org
Subject: submsg

Hello world

""")


def section(spec: str) -> Section:
    parts: list[int] = []
    rest = spec
    while rest and rest[0].isdigit():
        number, _, rest = rest.partition(".")
        parts.append(int(number))
    text = rest.upper() or None
    fields: tuple[str, ...] = ()
    if text and text.startswith("HEADER.FIELDS"):
        text, _, names = text.partition(" ")
        fields = tuple(names.strip("()").split())
    return Section(tuple(parts), text, fields)


@pytest.mark.parametrize("message,spec,expected", [
    (MIXED, "1", "hello\n"),
    (MIXED, "1.MIME", "Content-Type: text/x-myown; charset=us-ascii\n\n"),
    (MIXED, "2.MIME", "Content-Type: message/rfc822\n\n"),
    (MIXED, "2.HEADER", "From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\nSubject: submsg\n"
                        "Content-Type: multipart/alternative; boundary=\"sub1\"\n\n"),
    (MIXED, "2.HEADER.FIELDS (from subject X-foo)", "From: sub@domain.org\nSubject: submsg\n\n"),
    (MIXED, "2.HEADER.FIELDS.NOT (from subject X-foo)",
     "Date: Sun, 12 Aug 2012 12:34:56 +0300\nContent-Type: multipart/alternative; boundary=\"sub1\"\n\n"),
    (MIXED, "2.1.MIME", "Content-Type: text/html\n\n"),
    (MIXED, "2.1", "<p>Hello world</p>\n"),
    (MIXED, "2.2", "Hello another world\n"),
    (DIGEST, "1.1", "From: m1@example.com\nSubject: m1\n\nm1 body\n"),
    (DIGEST, "1.1.MIME", "\n"),
    (DIGEST, "1.1.HEADER", "From: m1@example.com\nSubject: m1\n\n"),
    (DIGEST, "1.1.TEXT", "m1 body\n"),
    (DIGEST, "1.2.MIME", "X-Mime: m2 header\n\n"),
    (DIGEST, "1.2.TEXT", "m2 body\n"),
    (NESTED, "1.1", "From: sub@domain.org\nSubject: submsg\n\nHello world\n\n"),
    (NESTED, "1.1.1", "Hello world\n\n"),
    (NESTED, "1.HEADER", "From: user2@domain.org\nContent-Type: message/rfc822\n\n"),
    (NESTED, "1.1.HEADER", "From: sub@domain.org\nSubject: submsg\n\n"),
    (NESTED, "1.1.TEXT", "Hello world\n\n"),
])
def test_nested_sections(message: bytes, spec: str, expected: str) -> None:
    assert Message(message).section(section(spec)) == crlf(expected)


def test_whole_part_of_message_rfc822_and_epilogue() -> None:
    body2 = Message(MIXED).section(section("2"))
    assert body2.startswith(b"From: sub@domain.org\r\n") and body2.endswith(b"Sub MIME epilogue\r\n")
    text = Message(MIXED).section(section("TEXT"))
    assert text.startswith(b"Root MIME prologue") and text.endswith(b"Root MIME epilogue\r\n\r\n")


def test_bodystructure_of_digest_defaults_to_message_rfc822() -> None:
    structure = Message(DIGEST).bodystructure(False)
    assert structure.count('"message" "rfc822"') == 3  # the root part and both digest entries
    assert '"digest")' in structure


# ---------------------------------------------------------------------------------------------- hostile input

PIECES = [b"From: a@b\r\n", b"To: x:y@z;\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
          b"Content-Type: message/rfc822\r\n", b"Content-Type: text/plain; charset=\"x\r\n", b"\r\n", b"--b\r\n",
          b"--b--\r\n", b"body\r\n", b"\n", b" folded\r\n", b"Subject: =?utf-8?q?=E2=82?=\r\n", b"\xff\xfe",
          b"Content-Type: multipart/digest; boundary=\"\"\r\n", b"(((", b"<@a,@b:c@d>", b"\"unterminated"]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join) | st.binary(max_size=400))
def test_hostile_messages_never_break_fetch(data: bytes) -> None:
    message = Message(data)
    assert message.envelope().startswith("(")
    assert message.bodystructure(True).startswith("(")
    assert message.bodystructure(False).startswith("(")
    for spec in ("1", "1.MIME", "2.1", "1.HEADER", "TEXT", "HEADER.FIELDS (FROM)", "3.2.1.TEXT"):
        result = message.section(section(spec))
        assert result is None or isinstance(result, bytes)
    message.decoded_header("subject")
    extract(data)  # what SEARCH BODY/TEXT reads, from the index or from the file


@given(st.binary(max_size=200))
def test_address_parser_never_crashes(raw: bytes) -> None:
    for address in parse_addresses(raw):
        assert len(address) == 4


def test_deeply_nested_multiparts_are_bounded() -> None:
    depth = 500
    data = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    message = Message(data + b"\r\nleaf\r\n")
    assert message.bodystructure(True).count("(") < 2000  # cut off at MAX_DEPTH, no RecursionError
