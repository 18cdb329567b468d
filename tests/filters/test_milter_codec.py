"""The milter wire format by itself: every command and reply survives encode and decode, anything a milter may
send decodes to a typed reply or a MilterProtocolError, and the message is cut up as Postfix cuts it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.filters import scanner
from appliance.filters.milter import codec
from appliance.filters.milter.client import changes, header_fields
from appliance.filters.milter.codec import MilterProtocolError

U32 = st.integers(0, 2**32 - 1)
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"), min_size=1,
                max_size=20)
MACROS = st.lists(st.tuples(TEXT, TEXT), max_size=4).map(tuple)
ARGS = st.lists(TEXT, max_size=4).map(tuple)
OPTNEG = st.builds(codec.OptNeg, U32, U32, U32, st.lists(st.tuples(U32, TEXT), max_size=3).map(tuple))

COMMANDS = st.one_of(
    OPTNEG,
    st.builds(codec.DefineMacros, st.sampled_from("CHMRTNE"), MACROS),
    st.builds(codec.Connect, TEXT, st.sampled_from("46L"), st.integers(0, 65535), TEXT),
    st.builds(codec.Connect, TEXT, st.just("U")),
    st.builds(codec.Helo, TEXT), st.builds(codec.Mail, ARGS), st.builds(codec.Rcpt, ARGS),
    st.builds(codec.Header, TEXT, TEXT), st.builds(codec.Body, st.binary(max_size=300)),
    st.builds(codec.Unknown, TEXT),
    st.sampled_from(codec.Step),
)


@st.composite
def smtp_replies(draw: st.DrawFn) -> str:
    code = draw(st.sampled_from("45")) + draw(st.text("0123456789", min_size=2, max_size=2))
    texts = draw(st.lists(st.text("abcXYZ .,!%-", max_size=30), min_size=1, max_size=4))
    lines = [f"{code}-{text}" for text in texts[:-1]] + [f"{code} {texts[-1]}"]
    return "\r\n".join(lines)


OPTIONAL = st.none() | TEXT
REPLIES = st.one_of(
    st.sampled_from(codec.Status),
    st.builds(codec.ReplyCode, smtp_replies()),
    st.builds(codec.AddHeader, TEXT, TEXT), st.builds(codec.InsertHeader, U32, TEXT, TEXT),
    st.builds(codec.ChangeHeader, U32, TEXT, TEXT), st.builds(codec.ReplaceBody, st.binary(max_size=300)),
    st.builds(codec.ChangeFrom, TEXT, OPTIONAL), st.builds(codec.AddRecipient, TEXT, OPTIONAL),
    st.builds(codec.DeleteRecipient, TEXT), st.builds(codec.Quarantine, TEXT),
    st.builds(codec.SetSymList, U32, TEXT), OPTNEG,
)
REPLY_TYPES = (codec.Status, codec.ReplyCode, codec.AddHeader, codec.InsertHeader, codec.ChangeHeader,
               codec.ReplaceBody, codec.ChangeFrom, codec.AddRecipient, codec.DeleteRecipient, codec.Quarantine,
               codec.SetSymList, codec.OptNeg)


def _packet(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + code + data


@given(COMMANDS)
def test_every_command_survives_encode_and_decode(command: codec.Command) -> None:
    packet = codec.encode(command)
    assert struct.unpack(">I", packet[:4])[0] == len(packet) - 4
    assert codec.decode_command(packet[4], packet[5:]) == command


@given(st.lists(REPLIES, min_size=1, max_size=5), st.data())
def test_every_reply_survives_encode_and_decode_in_any_pieces(replies: list[codec.Reply],
                                                               data: st.DataObject) -> None:
    stream = b"".join(codec.encode_reply(reply) for reply in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = codec.ReplyDecoder()
    decoded = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded += decoder.feed(stream[start:end])
    assert decoded == replies
    assert decoder.pending == 0


CODES = st.sampled_from(list(b"acdrtspf4yhimbe2+-qlOzA\x00\xff"))


@given(st.lists(st.one_of(st.binary(max_size=64),
                          st.builds(lambda code, data: _packet(bytes([code]), data), CODES, st.binary(max_size=40))),
                max_size=6))
def test_anything_a_milter_sends_is_a_typed_reply_or_a_protocol_error(pieces: list[bytes]) -> None:
    decoder = codec.ReplyDecoder()
    try:
        for piece in pieces:
            assert all(isinstance(reply, REPLY_TYPES) for reply in decoder.feed(piece))
    except MilterProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize(("stream", "complaint"), [
    (b"\x00\x00\x00\x00", "length 0"),
    (struct.pack(">I", codec.MAX_PACKET + 1) + b"y", "more than"),
    (_packet(b"z"), "unknown reply code"),
    (_packet(b"c", b"x"), "carries 1 bytes"),
    (_packet(b"h", b"X-Name\0no terminator"), "terminating NUL"),
    (_packet(b"h", b"X-Name\0value\0extra"), "left over"),
    (_packet(b"m", b"\0\0"), "32-bit number"),
    (_packet(b"O", struct.pack(">II", 6, 0)), "32-bit number"),
    (_packet(b"y", b"250 2.0.0 fine\0"), "not a 4xx or 5xx"),
    (_packet(b"y", b"550 5.7.1 no\r\nRSET\0"), "not a 4xx or 5xx"),  # CR LF injection into the session
    (_packet(b"y", b"550 5.7.1 no\nMAIL FROM:<x>\0"), "not a 4xx or 5xx"),
    (_packet(b"y", b"550-5.7.1 one\r\n451 4.7.1 two\0"), "not a 4xx or 5xx"),  # one code throughout
    (_packet(b"y", b"550-5.7.1 never ends\0"), "not a 4xx or 5xx"),
    (_packet(b"y", b"550 4.7.1 classes differ\0"), "class differs"),
])
def test_malformed_replies_are_named(stream: bytes, complaint: str) -> None:
    with pytest.raises(MilterProtocolError, match=complaint):
        codec.ReplyDecoder().feed(stream)


def test_a_reply_code_reads_as_the_smtp_reply_sendmail_would_give() -> None:
    [reply] = codec.ReplyDecoder().feed(_packet(b"y", b"550-5.7.1 100%% spam\r\n550 5.7.1 see %s\0"))
    assert reply == codec.ReplyCode("550-5.7.1 100% spam\r\n550 5.7.1 see s")  # "%%" is "%", a lone "%" goes


def test_bodies_go_in_chunks_of_at_most_65535_bytes() -> None:
    body = bytes(range(256)) * 600
    chunks = list(codec.body_chunks(body))
    assert [len(chunk.chunk) for chunk in chunks] == [65535, 65535, 22530]
    assert b"".join(chunk.chunk for chunk in chunks) == body
    assert list(codec.body_chunks(b"")) == []
    with pytest.raises(ValueError):
        codec.encode(codec.Body(b"x" * 65536))


FIELD_VALUE = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=30)


@given(st.lists(st.tuples(NAMES, FIELD_VALUE, st.lists(FIELD_VALUE, max_size=2)), max_size=5),
       st.binary(max_size=100))
def test_header_fields_come_back_as_written(fields: list[tuple[str, str, list[str]]], body: bytes) -> None:
    message = b"".join(f"{name}:{value}".encode() + b"".join(b"\r\n\t" + more.encode() for more in folds) + b"\r\n"
                       for name, value, folds in fields) + b"\r\n" + body
    parsed, rest = header_fields(message)
    assert parsed == [(name, value + "".join("\r\n\t" + more for more in folds)) for name, value, folds in fields]
    assert rest == body


def test_a_line_that_is_no_header_field_starts_the_body() -> None:
    fields, body = header_fields(b"Subject: x\r\nFrom nobody\r\nmore\r\n")
    assert fields == [("Subject", " x")]
    assert body == b"From nobody\r\nmore\r\n"
    assert header_fields(b"Subject : spaced\r\n") == ([("Subject", " spaced")], b"")


def test_modifications_become_the_scanner_interfaces_changes() -> None:
    modifications: list[codec.Modification] = [
        codec.AddHeader("X-Spam", "yes"), codec.ChangeHeader(0, "Subject", "new"),
        codec.ChangeHeader(2, "X-Old", ""), codec.ReplaceBody(b"line one\nline"), codec.ReplaceBody(b" two\r\n"),
        codec.ChangeFrom("<bounce@x.test>", "SIZE=10"), codec.AddRecipient("<archive@x.test>"),
        codec.AddRecipient("<copy@x.test>", "NOTIFY=NEVER"), codec.DeleteRecipient("<b@y.test>"),
        codec.InsertHeader(0, "X-Folded", "first\nsecond\r\n\tthird"),
    ]
    assert changes(modifications, leading_space=False) == (
        scanner.AddHeader("X-Spam", "yes"), scanner.ChangeHeader("Subject", 1, "new"),
        scanner.ChangeHeader("X-Old", 2, ""), scanner.ReplaceBody(b"line one\r\nline two\r\n"),
        scanner.ChangeSender("bounce@x.test", "SIZE=10"), scanner.AddRecipient("archive@x.test"),
        scanner.AddRecipient("copy@x.test", "NOTIFY=NEVER"), scanner.DeleteRecipient("b@y.test"),
        # a line break without white space after it stays inside the field: it cannot start one of its own
        scanner.InsertHeader(0, "X-Folded", "first\r\n second\r\n\tthird"),
    )
    assert changes([codec.AddHeader("X-Spam", " yes")], leading_space=True) == (scanner.AddHeader("X-Spam", "yes"),)


@pytest.mark.parametrize("modifications", [
    [codec.ReplaceBody(b"a"), codec.AddHeader("X", "y"), codec.ReplaceBody(b"b")],
    [codec.AddHeader("Bad Name", "y")],
    [codec.AddHeader("", "y")],
    [codec.ChangeHeader(1, "X:Y", "y")],
    [codec.AddRecipient("<>")],
])
def test_modifications_that_make_no_sense_are_protocol_errors(modifications: list[codec.Modification]) -> None:
    with pytest.raises(MilterProtocolError):
        changes(modifications, leading_space=False)
