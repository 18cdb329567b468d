"""The POP3 parser alone: bytes in, Command or ParseError out (hypothesis for the edges)."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from appliance.pop3.multiline import encode_lines, encode_message, split_lines, top_lines, transmitted_size
from appliance.pop3.parser import MAX_LINE, Command, ParseError, parse_command


def test_simple_commands_case_insensitive():
    assert parse_command(b"stat\r\n") == Command("STAT")
    assert parse_command(b"List 3\r\n") == Command("LIST", number=3)
    assert parse_command(b"LIST\n") == Command("LIST")
    assert parse_command(b"TOP 2 0\r\n") == Command("TOP", number=2, lines=0)
    assert parse_command(b"AUTH plain dGVzdA==\r\n") == Command("AUTH", text="PLAIN", initial="dGVzdA==")
    assert parse_command(b"AUTH\r\n") == Command("AUTH")


def test_pass_keeps_spaces_and_user_takes_the_rest():
    # RFC 1939 §7: the PASS argument may contain spaces.
    assert parse_command(b"PASS  two  spaces \r\n") == Command("PASS", text=" two  spaces ")
    assert parse_command("USER zoë@example.org\r\n".encode()) == Command("USER", text="zoë@example.org")


def test_masked_repr():
    assert "secret" not in repr(parse_command(b"PASS secret\r\n"))


def test_errors_have_reasons():
    cases = {
        b"\r\n": "empty command",
        b"FOO\r\n": "unknown command 'FOO'",
        b"RETR\r\n": "RETR takes one message number",
        b"RETR x\r\n": "must be a decimal number",
        b"RETR -1\r\n": "must be a decimal number",
        b"RETR 99999999999\r\n": "out of range",
        b"TOP 1\r\n": "TOP takes a message number and a line count",
        b"STAT 1\r\n": "STAT takes no argument",
        b"LIST 1 2\r\n": "LIST takes at most one message number",
        b"PASS\r\n": "PASS needs the password",
        b"USER \r\n": "USER needs a name",
        b"NOOP\x00\r\n": "control characters",
        b"USER \xff\r\n": "not valid UTF-8",
        b"AUTH A B C\r\n": "AUTH takes a mechanism",
        b"AUTH PL*IN\r\n": "malformed SASL mechanism",
        b"NOOP" + b" " * MAX_LINE + b"\r\n": "line longer than",
    }
    for line, reason in cases.items():
        result = parse_command(line)
        assert isinstance(result, ParseError), line
        assert reason in result.reason, (line, result.reason)


@given(st.binary(max_size=2 * MAX_LINE))
def test_any_bytes_give_a_command_or_a_reason(line):
    result = parse_command(line)
    assert isinstance(result, (Command, ParseError))
    if isinstance(result, ParseError):
        assert result.reason and "\n" not in result.reason and "\r" not in result.reason


_keyword = st.sampled_from(["RETR", "DELE", "LIST", "UIDL"])


@given(_keyword, st.integers(min_value=0, max_value=2**31 - 1), st.sampled_from([str.upper, str.lower, str.title]))
def test_numbered_commands_round_trip(keyword, number, case):
    assert parse_command(f"{case(keyword)} {number}\r\n".encode()) == Command(keyword, number=number)


@given(st.text(min_size=1, max_size=200).filter(lambda s: "\r" not in s and "\n" not in s and "\x00" not in s))
def test_any_password_survives_exactly(password):
    assert parse_command(b"PASS " + password.encode() + b"\r\n") == Command("PASS", text=password)


_line = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(st.lists(_line, max_size=30))
def test_byte_stuffing_round_trips(lines):
    """Undoing RFC 1939 §3 byte-stuffing gives back the original lines; "." alone only at the end."""
    data = b"\r\n".join(lines) + (b"\r\n" if lines else b"")
    wire = encode_message(data)
    assert wire.endswith(b".\r\n")
    body = wire[: -len(b".\r\n")].split(b"\r\n")[:-1] if lines else []
    assert b"." not in body
    assert [line[1:] if line.startswith(b".") else line for line in body] == lines
    assert transmitted_size(data) == len(data)


def test_bare_lf_is_sent_as_crlf_and_top():
    message = b"Subject: hi\nFrom: a@example.org\n\n.dot line\nsecond\nthird\n"
    assert encode_message(message) == (
        b"Subject: hi\r\nFrom: a@example.org\r\n\r\n..dot line\r\nsecond\r\nthird\r\n.\r\n")
    assert top_lines(message, 0) == [b"Subject: hi", b"From: a@example.org", b""]
    assert top_lines(message, 2) == [b"Subject: hi", b"From: a@example.org", b"", b".dot line", b"second"]
    assert top_lines(message, 99) == split_lines(message)


@given(st.lists(_line, max_size=20), st.lists(_line, max_size=20), st.integers(min_value=0, max_value=30))
def test_top_never_returns_more_than_asked(header, body, count):
    header = [h for h in header if h]
    assume(header)
    data = b"\r\n".join(header + [b""] + body) + b"\r\n"
    top = top_lines(data, count)
    assert top[: len(header) + 1] == header + [b""]
    assert top[len(header) + 1:] == body[:count]


@given(st.binary(max_size=300))
def test_whole_buffer_encoding_equals_line_by_line(data):
    assert encode_message(data) == encode_lines(split_lines(data))
