"""The header decoding behind the SORT and THREAD keys (``imap.sortkeys``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance.imap.sortkeys import decode_header_text


def test_encoded_words_decode_wherever_they_stand_and_adjacent_ones_join() -> None:
    assert decode_header_text(b"=?UTF-8?Q?Caf=C3=A9?=") == "Café"
    assert decode_header_text(b"Re:=?UTF-8?Q?Caf=C3=A9?=x") == "Re:Caféx"  # no space added (as Dovecot)
    assert decode_header_text(b"=?UTF-8?B?w4Q=?= \t =?ISO-8859-1?Q?=E9?=") == "Äé"  # RFC 2047 §6.2
    assert decode_header_text(b"a =?UTF-8?Q?b?= c") == "a b c"
    assert decode_header_text(b"=?UTF-8*de?Q?x_y?=") == "x y"  # RFC 2231 §5 language suffix


def test_undecodable_words_stay_as_they_are() -> None:
    assert decode_header_text(b"=?X-NOSUCH?Q?abc?= x") == "=?X-NOSUCH?Q?abc?= x"
    assert decode_header_text(b"=?UTF-8?B?###?=") == "=?UTF-8?B?###?="


@given(st.text(max_size=60).filter(lambda t: "=?" not in t))
def test_text_without_encoded_words_is_unchanged(text: str) -> None:
    assert decode_header_text(text.encode("utf-8")) == text


@given(st.lists(st.sampled_from([b"=?", b"?=", b"?Q?", b"?B?", b"UTF-8", b"=C3", b"=A9", b"w4Q=", b" ", b"\xff",
                                 b"x", b"_", b"*"]), max_size=15).map(b"".join))
def test_any_header_bytes_decode_to_text(raw: bytes) -> None:
    assert isinstance(decode_header_text(raw), str)
