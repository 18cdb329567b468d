"""The Authentication-Results writer and the reader of authserv-ids (RFC 8601 §2.2), by themselves."""

from __future__ import annotations

import dkim
from hypothesis import given
from hypothesis import strategies as st

from appliance.senderauth.results import (
    MethodResult,
    authserv_id,
    gateway_dmarc_disposition,
    header_value,
    remove_ours,
    value,
)
from appliance.senderauth.signatures import usable

OWN = "mx.home.test"
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
FIELD_NAMES = st.sampled_from(["Received", "From", "Subject", "Authentication-Results", "ARC-Seal", "X-A"])


@given(TEXT)
def test_a_written_value_reads_back_as_the_authserv_id(text: str) -> None:
    assert authserv_id(f"{value(text)}; spf=pass") == text


@given(st.text(max_size=60))
def test_reading_any_value_never_fails(text: str) -> None:
    found = authserv_id(text)
    assert found is None or isinstance(found, str)


def test_comments_and_quotes_around_the_authserv_id() -> None:
    assert authserv_id(" (a (nested) comment)\r\n\tmx.home.test; dkim=pass") == OWN
    assert authserv_id('"MX.HOME.TEST" 1; none') == "MX.HOME.TEST"
    assert authserv_id("(unterminated") is None
    assert authserv_id('"unterminated') is None
    assert authserv_id("; spf=pass") is None


def test_header_value_has_one_resinfo_a_line_and_quotes_what_is_not_a_token() -> None:
    text = header_value(OWN, [
        MethodResult("spf", "pass", "sender SPF authorized", (("smtp.mailfrom", "example.org"),)),
        MethodResult("dkim", "pass", "", (("header.d", "example.org"), ("header.b", "ab+/=c")), ""),
        MethodResult("dmarc", "fail", "", (("header.from", "example.org"),), "p=reject (x) dis=reject"),
    ])
    assert text.split("\n") == [
        f"{OWN};",
        'spf=pass reason="sender SPF authorized" smtp.mailfrom=example.org;',
        'dkim=pass header.d=example.org header.b="ab+/=c";',
        r"dmarc=fail (p=reject \(x\) dis=reject) header.from=example.org",
    ]
    assert header_value(OWN, []) == f"{OWN}; none"


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A message of fields (some of them ours, some folded) and a body; and the fields that are not ours."""
    fields: list[bytes] = []
    kept: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(FIELD_NAMES)
        ours = name == "Authentication-Results" and draw(st.booleans())
        ident = draw(st.sampled_from([OWN, OWN.upper(), f'"{OWN}"', f"(c) {OWN}"])) if ours else "other.test"
        fold = draw(st.sampled_from(["", "\r\n\t", "\r\n "]))
        field = f"{name}: {ident};{fold} spf=pass\r\n".encode()
        fields.append(field)
        if not ours:
            kept.append(field)
    body = draw(st.sampled_from([b"", b"\r\nAuthentication-Results: mx.home.test; x\r\n", b"\r\nbody\r\n"]))
    return b"".join(fields) + body, kept + [body]


@given(messages())
def test_removal_takes_our_fields_only_and_leaves_the_rest_byte_for_byte(case: tuple[bytes, list[bytes]]) -> None:
    content, kept = case
    cleaned, removed = remove_ours(content, OWN)
    assert cleaned == b"".join(kept)
    assert (removed == 0) == (cleaned is content)
    assert remove_ours(cleaned, OWN) == (cleaned, 0)


@given(st.lists(st.sampled_from([b"From: a@b.test", b" folded", b"Subject : spaced", b"garbage line", b"\tx",
                                 b"", b"X-\xff: bytes", b"DKIM-Signature: v=1; d=b.test"]), max_size=8))
def test_what_dkimpy_is_given_it_can_always_read(lines: list[bytes]) -> None:
    content = b"\r\n".join(lines) + b"\r\n"
    fixed = usable(content)
    dkim.rfc822_parse(fixed)  # raises MessageFormatError (or IndexError) on a header section it cannot read
    assert fixed.replace(b"\r\n", b"") == content.replace(b"\r\n", b"")  # only a line end added, nothing lost


def test_a_gateways_dmarc_disposition_is_read_from_the_topmost_of_ours() -> None:
    failure = header_value(OWN, [MethodResult("dmarc", "fail", "no aligned pass", (("header.from", "a.test"),),
                                              "p=reject dis=quarantine")])
    ours = f"Authentication-Results: {failure}".replace("\n", "\r\n\t").encode() + b"\r\n"
    passed = f"Authentication-Results: {OWN}; dmarc=pass header.from=a.test\r\n".encode()
    other = b"Authentication-Results: other.test; dmarc=fail (p=reject dis=reject)\r\n"
    assert gateway_dmarc_disposition(other + ours + passed + b"\r\nbody", OWN) == "quarantine"
    assert gateway_dmarc_disposition(passed + ours + b"\r\nbody", OWN) is None  # the nearest gateway's counts
    assert gateway_dmarc_disposition(other + b"\r\n" + ours, OWN) is None  # in the body: not a field
