"""TLSA matching (RFC 7672 §3.1, RFC 6698 §2.1): selectors, matching types, DANE-EE vs DANE-TA."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from peers.tls import new_ca

from appliance.tlspolicy.dane import TLSARecord, verify


def _der_chain(pem: bytes) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem))


def _data(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    raw = (cert.public_bytes(serialization.Encoding.DER) if selector == 0 else
           cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return {0: raw, 1: hashlib.sha256(raw).digest(), 2: hashlib.sha512(raw).digest()}[mtype]


@pytest.fixture
def chain(tmp_path: Path):
    ca = new_ca(tmp_path / "ca")
    pair = ca.issue(tmp_path, "mx.example.test", include_ca=True)
    der = _der_chain(pair.cert.read_bytes())
    return ca, der, x509.load_der_x509_certificate(der[0])


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_every_selector_and_matching_type(chain, selector: int, mtype: int) -> None:
    _, der, leaf = chain
    assert verify([TLSARecord(3, selector, mtype, _data(leaf, selector, mtype))], der, ["any.name.test"]) is None


@pytest.mark.parametrize("selector", [0, 1])
def test_dane_ta_needs_the_name_of_the_mx(chain, selector: int) -> None:
    ca, der, _ = chain
    record = TLSARecord(2, selector, 1, _data(ca.certificate, selector, 1))
    assert verify([record], der, ["mx.example.test"]) is None
    assert verify([record], der, ["other.example.test"]) is not None
    assert verify([record], der[:1], ["mx.example.test"]) is not None  # the TA must be in the chain sent


def test_pkix_usages_and_unknown_parameters_never_match(chain) -> None:
    _, der, leaf = chain
    records = [TLSARecord(1, 1, 1, _data(leaf, 1, 1)), TLSARecord(0, 1, 1, _data(leaf, 1, 1)),
               TLSARecord(3, 1, 3, _data(leaf, 1, 1)), TLSARecord(3, 2, 1, _data(leaf, 1, 1))]
    assert not any(r.usable for r in records)
    assert verify(records, der, ["mx.example.test"]) is not None
