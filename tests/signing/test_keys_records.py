"""The key store on disk and the TXT record of a key: the record a key produces verifies a signature made with it
(dkimpy, for rsa-sha256 and ed25519-sha256), a zone file can hold it, and a damaged store is refused by name."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from appliance.signing.keys import (
    KeyRecord,
    KeyStore,
    KeyStoreError,
    KeyStoreWriter,
    generate_key,
    public_key_data,
    read_private_key,
    record_matches,
    txt_record,
    txt_strings,
    zone_line,
)

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
           b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob.\r\n")


def _dkimpy_key(algorithm: str, pem: bytes) -> bytes:
    """The private key as dkimpy signs with it: the PEM for RSA, base64 of the 32-byte seed for Ed25519."""
    if algorithm == "rsa-sha256":
        return pem
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return base64.b64encode(raw)


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_the_record_of_a_key_verifies_its_signature(algorithm: str) -> None:
    pem = generate_key(algorithm)
    line = zone_line("example.org", "mf1", algorithm, public_key_data(pem))
    name, ttl, klass, kind, rest = line.split(" ", 4)
    assert (name, klass, kind) == ("mf1._domainkey.example.org.", "IN", "TXT")
    strings = [part.strip('"') for part in rest.split('" "')]
    assert all(len(s) <= 255 for s in strings)
    published = "".join(strings).encode()

    def dnsfunc(qname: bytes, timeout: float = 5) -> bytes:
        return published if qname == b"mf1._domainkey.example.org." else b""

    signed = dkim.sign(MESSAGE, b"mf1", b"example.org", _dkimpy_key(algorithm, pem),
                       signature_algorithm=algorithm.encode()) + MESSAGE
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    other = public_key_data(generate_key(algorithm))
    published = txt_record(algorithm, other).encode()  # another key under the same selector: no longer verifies
    assert not dkim.verify(signed, dnsfunc=dnsfunc)


def test_an_ed25519_record_holds_the_raw_public_key() -> None:
    public = public_key_data(generate_key("ed25519-sha256"))
    assert len(base64.b64decode(public)) == 32  # RFC 8463 §4.2
    assert txt_record("ed25519-sha256", public) == f"v=DKIM1; k=ed25519; p={public}"


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=2000))
def test_txt_strings_split_into_255_octets_and_join_back(record: str) -> None:
    parts = txt_strings(record)
    assert "".join(parts) == record
    assert all(len(part) <= 255 for part in parts)
    assert all(len(part) == 255 for part in parts[:-1])


@given(st.lists(st.sampled_from([" ", "\t", ""]), min_size=3, max_size=3), st.booleans())
def test_a_record_matches_whatever_its_spacing(spaces: list[str], with_k: bool) -> None:
    public = "MCowBQYDK2VwAyEA" + "A" * 28
    a, b, c = spaces
    text = f"v=DKIM1;{a}k{b}={c}rsa; p={public[:10]}{a}{public[10:]}" if with_k else f"p= {public}{c}"
    assert record_matches(text, "rsa-sha256", public)
    assert not record_matches(text, "ed25519-sha256", public)
    assert not record_matches(text.replace("p=", "p=B"), "rsa-sha256", public)


def test_keys_are_written_0600_and_the_state_is_read_back(tmp_path: Path) -> None:
    store = KeyStoreWriter(tmp_path)
    pem = generate_key("ed25519-sha256")
    store.write_key("example.org", "mf1", pem)
    keys = store.read("example.org")
    keys.set(KeyRecord("mf1", "ed25519-sha256", "active", created=1.0, activated=2.0))
    store.write(keys)
    assert stat.S_IMODE(os.stat(tmp_path / "example.org" / "mf1.pem").st_mode) == 0o600
    assert not [p for p in (tmp_path / "example.org").iterdir() if ".tmp" in p.name]
    assert store.read("example.org").records == keys.records
    assert store.domains() == ["example.org"]
    [signing] = KeyStore(tmp_path).signing_keys("example.org")  # what the signer reads
    assert (signing.selector, signing.algorithm, signing.private_pem) == ("mf1", "ed25519-sha256", pem)


@pytest.mark.parametrize("body, words", [
    (b"{not json", "not a key store"),
    (b'{"keys": {}}', "'keys' is not a list"),
    (b'{"keys": [{"selector": "a"}]}', "keys[0]: needs selector, algorithm, state, created"),
    (b'{"keys": [{"selector": "a", "algorithm": "rsa-sha1", "state": "active", "created": 1}]}',
     "unknown algorithm 'rsa-sha1'"),
    (b'{"keys": [{"selector": "a", "algorithm": "rsa-sha256", "state": "gone", "created": 1}]}',
     "unknown state 'gone'"),
    (b'{"keys": [{"selector": "../x", "algorithm": "rsa-sha256", "state": "active", "created": 1}]}',
     "bad selector '../x'"),
    (b'{"keys": [{"selector": "a", "algorithm": "rsa-sha256", "state": "active", "created": "now"}]}',
     "created is not a time"),
])
def test_a_damaged_keys_json_is_refused_naming_the_file(tmp_path: Path, body: bytes, words: str) -> None:
    (tmp_path / "example.org").mkdir()
    (tmp_path / "example.org" / "keys.json").write_bytes(body)
    with pytest.raises(KeyStoreError) as caught:
        KeyStoreWriter(tmp_path).read("example.org")
    assert str(caught.value).startswith(f"{tmp_path / 'example.org' / 'keys.json'}: ")
    assert words in str(caught.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    store = KeyStoreWriter(tmp_path)
    keys = store.read("example.org")
    keys.set(KeyRecord("mf1", "rsa-sha256", "active", created=1.0))
    store.write(keys)
    with pytest.raises(KeyStoreError, match=r"example\.org/mf1\.pem: No such file"):
        store.read("example.org").public("mf1")


def test_imported_keys_are_rsa_or_ed25519_and_unencrypted() -> None:
    pkcs1 = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    algorithm, pkcs8 = read_private_key(pkcs1, "k.pem")
    assert algorithm == "rsa-sha256" and pkcs8.startswith(b"-----BEGIN PRIVATE KEY-----")
    short = subprocess.run(["openssl", "genrsa", "768"], capture_output=True, check=True).stdout
    with pytest.raises(KeyStoreError, match="k.pem: an RSA key of 768 bits is too short"):
        read_private_key(short, "k.pem")
    ecdsa = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(KeyStoreError, match="k.pem: .* is neither RSA nor Ed25519"):
        read_private_key(ecdsa, "k.pem")
    locked = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(KeyStoreError, match="k.pem: not an unencrypted PEM private key"):
        read_private_key(locked, "k.pem")
    with pytest.raises(KeyStoreError, match="k.pem: not an unencrypted PEM private key"):
        read_private_key(json.dumps({"a": 1}).encode(), "k.pem")
