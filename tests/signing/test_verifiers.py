"""Signatures made by signing/signer.py, checked by independent verifiers (dkimpy's dkimverify, OpenDKIM's
opendkim-testmsg) against the keys in a real BIND: both algorithms pass, a changed field fails, and a From
added after signing fails (oversigning, RFC 6376 §8.15)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance.signing.keys import KeyStore
from appliance.signing.signer import NotSignable, Signer

from .conftest import SigningDNS

DKIMVERIFY = str(Path(sys.executable).parent / "dkimverify")
MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Tuesday\r\n"
           b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <tuesday@example.org>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           b"Shall we meet  on Tuesday? \r\n\r\n\r\n")


def _signed(signing_dns: SigningDNS, message: bytes = MESSAGE) -> bytes:
    return Signer(KeyStore(signing_dns.keys_dir)).sign(message)


def _only(signed: bytes, algorithm: bytes) -> bytes:
    """The signed message with only the signature of ``algorithm`` (opendkim-testmsg judges them all at once)."""
    head, _, body = signed.partition(b"\r\n\r\n")
    fields = head.replace(b"\r\n ", b"\x00 ").split(b"\r\n")
    kept = [f for f in fields if not (f.startswith(b"DKIM-Signature:") and b"a=" + algorithm not in f)]
    return b"\r\n".join(kept).replace(b"\x00 ", b"\r\n ") + b"\r\n\r\n" + body


def _dkimverify(signing_dns: SigningDNS, message: bytes, index: int) -> bool:
    return signing_dns.run([DKIMVERIFY, "--index", str(index)], message).returncode == 0


def _opendkim(signing_dns: SigningDNS, message: bytes) -> bool:
    return signing_dns.run(["opendkim-testmsg"], message).returncode == 0


def test_both_signatures_verify_with_dkimverify_and_opendkim(signing_dns: SigningDNS) -> None:
    signed = _signed(signing_dns)
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed
    assert _dkimverify(signing_dns, signed, 0) and _dkimverify(signing_dns, signed, 1)
    for algorithm in (b"rsa-sha256", b"ed25519-sha256"):
        only = _only(signed, algorithm)
        assert only.count(b"DKIM-Signature:") == 1
        assert _opendkim(signing_dns, only), algorithm


@pytest.mark.parametrize("change", [
    (b"Subject: Tuesday", b"Subject: Wednesday"),
    (b"From: Alice <alice@example.org>", b"From: Mallory <alice@example.org>"),
    (b"Shall we meet", b"Shall we skip"),
])
def test_a_changed_message_fails_both_verifiers(signing_dns: SigningDNS, change: tuple[bytes, bytes]) -> None:
    signed = _signed(signing_dns).replace(*change)
    assert not _dkimverify(signing_dns, signed, 0) and not _dkimverify(signing_dns, signed, 1)
    assert not _opendkim(signing_dns, signed)


def test_a_from_added_after_signing_breaks_the_signatures(signing_dns: SigningDNS) -> None:
    signed = _signed(signing_dns)
    head, _, body = signed.partition(b"\r\n\r\n")
    forged = head + b"\r\nFrom: Your Bank <security@bank.example>\r\n\r\n" + body
    assert not _dkimverify(signing_dns, forged, 0) and not _dkimverify(signing_dns, forged, 1)
    assert not _opendkim(signing_dns, forged)


def test_what_is_not_signed(signing_dns: SigningDNS) -> None:
    signer = Signer(KeyStore(signing_dns.keys_dir))
    other = MESSAGE.replace(b"alice@example.org>", b"alice@elsewhere.example>", 1)
    assert signer.sign(other) == other  # no keys for that domain: unchanged
    for bad in (b"From: a@example.org\r\nFrom: b@example.org\r\n\r\nx\r\n",
                b"From: a@example.org, b@example.org\r\n\r\nx\r\n", b"From: nobody\r\n\r\nx\r\n"):
        with pytest.raises(NotSignable):
            signer.signatures(bad)
        assert signer.sign(bad) == bad


def test_resigning_after_a_downgrade_verifies_and_leaves_other_signatures(signing_dns: SigningDNS) -> None:
    signer = Signer(KeyStore(signing_dns.keys_dir))
    foreign = b"DKIM-Signature: v=1; a=rsa-sha256; d=elsewhere.example; s=x; h=from; bh=AA==; b=AA==\r\n"
    signed = foreign + signer.sign(MESSAGE)
    converted = signed.replace(b"Shall we meet", b"Shall we=20meet")  # what a 7-bit conversion does to a body
    assert not _dkimverify(signing_dns, converted, 1)
    again = signer.resign(converted)
    assert again.count(b"DKIM-Signature:") == 3 and foreign in again
    assert _dkimverify(signing_dns, again, 0) and _dkimverify(signing_dns, again, 1)
    assert signer.resign(MESSAGE) == MESSAGE  # never signed by us: not ours to sign on the way out
