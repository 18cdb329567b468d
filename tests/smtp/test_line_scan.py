"""The one-pass DATA check answers as the separate checks it replaces (bare CR/LF, line length, NUL)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.message.lines import MAX_DATA_LINE as _MAX_LINE
from appliance.message.lines import has_bare_cr_or_lf
from appliance.message.lines import scan_lines as _scan_lines
from appliance.smtp.protocol import _longest_line

_PIECES = [b"\r\n", b"\r", b"\n", b".", b"a", b"\0", b"\r\r\n", b"\n\r", b"\r\n\0.\r\n", b"a" * 500, b"b" * 999]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join))
def test_scan_matches_the_separate_checks(data: bytes) -> None:
    assert _scan_lines(data) == (has_bare_cr_or_lf(data), _longest_line(data) > _MAX_LINE, b"\0" in data)


def test_examples() -> None:
    line = b"x" * _MAX_LINE + b"\r\n"
    assert _scan_lines(line * 3) == (False, False, False)
    assert _scan_lines(b"x" * (_MAX_LINE + 1) + b"\r\n") == (False, True, False)
    assert _scan_lines(line * 2 + b"smuggled\n.\r\n") == (True, False, False)
    assert _scan_lines(b"short\rline\r\n") == (True, False, False)
    assert _scan_lines(b"short\r\n\0.\r\n") == (False, False, True)
    assert _scan_lines(line * 2 + b"\r\n\0.\r\n") == (False, False, True)
