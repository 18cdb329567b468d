"""Properties of the signer over generated messages (hypothesis): whatever the header fields and body, both
signatures verify (dkimpy against the published records), our signatures come off again exactly (what the
re-signing after a downgrade relies on), and From is oversigned."""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.signing.keys import KeyStore
from appliance.signing.signer import Signer, _drop_signatures, from_domain, header_list, relaxed_body

from .keys_on_disk import write_keys

NAMES = st.sampled_from(["Subject", "To", "Cc", "Reply-To", "X-Mailer", "List-Id", "Content-Type", "Date",
                         "Message-ID", "References", "X-Other"])
VALUE = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
LINE = st.text(st.characters(min_codepoint=32, max_codepoint=126).filter(lambda c: c != "\r"), max_size=80)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, dict[bytes, bytes]]:
    root = tmp_path_factory.mktemp("keys")
    keys = write_keys(root, "example.org")
    records = {f"{k.selector}._domainkey.example.org.".encode():
               f"v=DKIM1; k={'rsa' if k.algorithm == 'rsa-sha256' else 'ed25519'}; p={k.public_b64}".encode()
               for k in keys}
    return Signer(KeyStore(Path(root))), records


def _message(fields: list[tuple[str, str]], folded: bool, body: list[str]) -> bytes:
    head = "From: Alice <alice@example.org>\r\n" + "".join(
        f"{name}: {value[:10]}\r\n {value[10:]}\r\n" if folded and len(value) > 10 else f"{name}: {value}\r\n"
        for name, value in fields)
    return (head + "\r\n" + "".join(line + "\r\n" for line in body)).encode()


@settings(max_examples=40)
@given(st.lists(st.tuples(NAMES, VALUE), max_size=8), st.booleans(), st.lists(LINE, max_size=12))
def test_every_message_signed_verifies_and_unsigns(signer, fields, folded, body) -> None:
    sign, records = signer
    message = _message(fields, folded, body)
    signed = sign.sign(message)
    assert signed.count(b"DKIM-Signature:") == 2
    for index in (0, 1):
        assert dkim.DKIM(signed).verify(index, dnsfunc=lambda name, timeout=5: records.get(name))
    ours = {("example.org", "rsa1"), ("example.org", "ed1")}
    assert _drop_signatures(signed, ours) == message
    headers, _ = dkim.rfc822_parse(message)
    names = header_list(headers)
    assert names.count(b"from") == 2  # present once, named twice (RFC 6376 §8.15)
    assert from_domain(headers) == "example.org"


@given(st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"a", b"b c", b"  ", b"\r", b"\n", b"\t \t"]), max_size=40))
def test_relaxed_body_is_dkimpys(parts: list[bytes]) -> None:
    body = b"".join(parts)
    assert relaxed_body(body) == dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(body)
