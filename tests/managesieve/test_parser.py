"""The pure ManageSieve parser (RFC 5804 §4) and the server's string encoding, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.managesieve.parser import Command, ParseError, parse_command, parse_sasl_response
from appliance.managesieve.response import literal, status, string


def test_commands_by_example() -> None:
    assert parse_command(b"capability") == Command("CAPABILITY")
    assert parse_command(b'PUTSCRIPT "a b" {6+}\r\nkeep;\n') == Command("PUTSCRIPT", ("a b", "keep;\n"))
    assert parse_command(b'PUTSCRIPT {1}\r\nx "keep;"') == Command("PUTSCRIPT", ("x", "keep;"))
    assert parse_command(b'HAVESPACE "x" 4294967295') == Command("HAVESPACE", ("x",), 4294967295)
    assert parse_command(b'AUTHENTICATE "PLAIN"') == Command("AUTHENTICATE", ("PLAIN",))
    assert parse_command(b'NOOP "t\\"ag\\\\"') == Command("NOOP", ('t"ag\\',))
    assert parse_sasl_response(b'{4+}\r\nAAAA') == "AAAA"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "expected a command name"),
    (b"FOO", "unknown command FOO"),
    (b"GETSCRIPT", "GETSCRIPT: missing argument"),
    (b"GETSCRIPT x", "expected a string"),
    (b'GETSCRIPT "a" "b"', "unexpected data"),
    (b'GETSCRIPT "a', "without its closing"),
    (b'GETSCRIPT "a\\n"', "escapes only"),
    (b'GETSCRIPT {5+}\r\nab', "shorter than its announced size"),
    (b'GETSCRIPT {x+}\r\nab', "malformed literal"),
    (b'HAVESPACE "a" 4294967296', "expected a number"),
    (b'GETSCRIPT "\xff"', "not valid UTF-8"),
    (b'GETSCRIPT "' + b"a" * 1025 + b'"', "longer than 1024"),
    (b"LOGOUTX", "unknown command"),
    (b"LOGOUT\t", "expected a space"),
])
def test_malformed_commands_are_named(raw: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason.replace("\\", "\\\\")):
        parse_command(raw)


names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
contents = st.text(st.characters(blacklist_categories=("Cs",)), max_size=2000)


@given(names, contents)
def test_what_the_server_writes_the_parser_reads(name: str, content: str) -> None:
    """Quoted or literal, any text survives the round trip (the client strings are the same grammar)."""
    raw = b"PUTSCRIPT " + string(name) + b" " + literal(content)
    assert parse_command(raw) == Command("PUTSCRIPT", (name, content))


@given(st.binary(max_size=300))
def test_any_bytes_give_a_command_or_a_parse_error(raw: bytes) -> None:
    try:
        command = parse_command(raw)
    except ParseError as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert command.name.isupper()


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=100), st.sampled_from(["OK", "NO", "BYE"]))
def test_status_lines_are_one_line_or_a_literal(text: str, kind: str) -> None:
    line = status(kind, text, "TRYLATER")
    assert line.startswith(kind.encode() + b" (TRYLATER)") and line.endswith(b"\r\n")
    body = line[len(kind) + len(" (TRYLATER) "):-2]
    if text:
        assert parse_sasl_response(body) == text
