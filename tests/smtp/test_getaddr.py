"""The fast path for MAIL FROM / RCPT TO paths answers exactly as aiosmtpd's own parser does."""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.smtp.server import InboundHandler, SMTPProtocol

_ALPHABET = "abcXYZ019.-_+=!#~@<>[]():,;\\\" \t"
_PARTS = ["<", ">", "@", ".", "a", "b.c", "x-y", "SIZE=10", " ", "\t", "(c)", '"q"', "[1.2.3.4]", "@r:", ","]


def _pair() -> tuple[SMTPProtocol, SMTP]:
    async def build() -> tuple[SMTPProtocol, SMTP]:
        loop = asyncio.get_running_loop()
        handler = InboundHandler.__new__(InboundHandler)
        return SMTPProtocol(handler, None, hostname="mx.test", loop=loop), SMTP(handler, hostname="mx.test", loop=loop)

    return asyncio.run(build())


OURS, THEIRS = _pair()


def _same(arg: str) -> None:
    try:
        expected = SMTP._getaddr(THEIRS, arg)
    except (IndexError, ValueError):  # aiosmtpd's parser crashes on some fragments; ours calls them bad syntax
        expected = (None, None)
    assert OURS._getaddr(arg) == expected, arg


def test_common_and_edge_paths() -> None:
    for arg in ["<a@b.c>", "<a@b.c> SIZE=100 BODY=8BITMIME", " <a.b@c-d.e>  X", "<A+b@B.C>", "<a@b.c>x", "<>",
                "<a@[1.2.3.4]>", "<a..b@c>", "<.a@b>", "<a@b.>", "<a@-b>", "<a@b..c>", "<a@b_c.d>", "<a@b.c> (x)",
                '<"a b"@c.d>', "<@r.s:a@b.c>", "a@b.c", "<a@b.c", "<" + "l" * 65 + "@b.c>", "<a@b.c>\t", "<"]:
        _same(arg)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=30))
def test_any_text(arg: str) -> None:
    _same(arg)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PARTS), max_size=8).map("".join))
def test_path_shaped_text(arg: str) -> None:
    _same(arg)
