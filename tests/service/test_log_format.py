"""The escaping behind every log line (message.printable, service.logs.EscapingFormatter), by itself."""

from __future__ import annotations

import logging
import sys

from hypothesis import given
from hypothesis import strategies as st

from appliance.message.printable import LIMIT, printable
from appliance.service.logs import MESSAGE_LIMIT, EscapingFormatter

FORMAT = "%(levelname)s %(name)s: %(message)s"
_text = st.text(st.characters(), max_size=LIMIT + 50) | st.binary(max_size=80).map(
    lambda raw: raw.decode("utf-8", "surrogateescape"))


@given(_text)
def test_printable_output_is_one_bounded_printable_line(text: str) -> None:
    out = printable(text)
    assert out.isprintable()  # no CR, LF, ESC, bidi control or lone surrogate (which would not even encode)
    out.encode("utf-8")
    assert len(out) <= 10 * LIMIT + 3  # at most LIMIT characters kept, each escaped to at most 10
    if text.isprintable() and len(text) <= LIMIT:
        assert out == text


@given(_text)
def test_ascii_only_output_is_printable_ascii(text: str) -> None:
    out = printable(text, 200, ascii_only=True)
    assert out.isascii() and out.isprintable()


def test_escapes() -> None:
    assert printable("evil\r\nfake\x1b[2K\t\x00") == "evil\\r\\nfake\\x1b[2K\\t\\x00"
    assert printable("a\u202eb") == "a\\u202eb"  # RIGHT-TO-LEFT OVERRIDE: it would reorder what follows
    assert printable(b"caf\xe9".decode("utf-8", "surrogateescape")) == "caf\\xe9"  # the byte the client sent
    assert printable("jürgen") == "jürgen" and printable("jürgen", ascii_only=True) == "j\\xfcrgen"
    assert printable("x" * (LIMIT + 1)) == "x" * LIMIT + "..."


def _format(msg: str, *args: object, exc_info: object = None) -> str:
    record = logging.LogRecord("appliance.smtp", logging.INFO, __file__, 1, msg, args or None, exc_info)  # type: ignore[arg-type]
    return EscapingFormatter(FORMAT).format(record)


@given(st.text(max_size=100), _text)
def test_a_record_is_one_printable_line_whatever_the_arguments(word: str, arg: str) -> None:
    line = _format(f"helo={word.replace('%', '%%')} user=%s", arg)  # a message put in by an f-string
    assert line.isprintable()
    assert len(line) <= len("INFO appliance.smtp: ") + MESSAGE_LIMIT + 3


def test_arguments_are_bounded_each_and_the_record_kept() -> None:
    record = logging.LogRecord("appliance.smtp", logging.INFO, __file__, 1, "user=%s ip=%s",
                               ("u" * 5000, "127.0.0.1"), None)
    assert EscapingFormatter(FORMAT).format(record) == f"INFO appliance.smtp: user={'u' * LIMIT}... ip=127.0.0.1"
    assert record.args == ("u" * 5000, "127.0.0.1")  # another handler sees what was logged
    assert _format("short and clean %s %d", "x", 3) == "INFO appliance.smtp: short and clean x 3"
    assert _format("%(user)s", {"user": "a\x1bb"}) == "INFO appliance.smtp: a\\x1bb"


def test_a_traceback_keeps_its_lines_but_no_control_characters() -> None:
    try:
        raise ValueError("client said \x1b[2K\rforged")
    except ValueError:
        line = _format("session failed", exc_info=sys.exc_info())
    assert "\x1b" not in line and "\r" not in line
    assert line.splitlines()[1] == "Traceback (most recent call last):"
    assert line.endswith("ValueError: client said \\x1b[2K\\rforged")
