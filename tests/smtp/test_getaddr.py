"""The command parser answers MAIL FROM / RCPT TO paths exactly as aiosmtpd's parser (the reference) does."""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.smtp.commands import parse_path

_ALPHABET = "abcXYZ019.-_+=!#~@<>[]():,;\\\" \t"
_PARTS = ["<", ">", "@", ".", "a", "b.c", "x-y", "SIZE=10", " ", "\t", "(c)", '"q"', "[1.2.3.4]", "@r:", ","]


def _reference() -> SMTP:
    async def build() -> SMTP:
        return SMTP(object(), hostname="mx.test", loop=asyncio.get_running_loop())

    return asyncio.run(build())


THEIRS = _reference()


def _same(arg: str) -> None:
    try:
        expected = SMTP._getaddr(THEIRS, arg)
    except (IndexError, ValueError, AttributeError):  # aiosmtpd crashes on some fragments; ours: malformed
        expected = (None, None)
    assert parse_path(arg) == expected, arg


def test_common_and_edge_paths() -> None:
    for arg in ["<a@b.c>", "<a@b.c> SIZE=100 BODY=8BITMIME", " <a.b@c-d.e>  X", "<A+b@B.C>", "<a@b.c>x", "<>",
                "<a@[1.2.3.4]>", "<a..b@c>", "<.a@b>", "<a@b.>", "<a@-b>", "<a@b..c>", "<a@b_c.d>", "<a@b.c> (x)",
                '<"a b"@c.d>', "<@r.s:a@b.c>", "a@b.c", "<a@b.c", "<" + "l" * 65 + "@b.c>", "<a@b.c>\t", "<", "",
                "0@["]:
        _same(arg)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=30))
def test_any_text(arg: str) -> None:
    _same(arg)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PARTS), max_size=8).map("".join))
def test_path_shaped_text(arg: str) -> None:
    _same(arg)
