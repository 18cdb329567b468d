"""SASL PLAIN / LOGIN decoding (RFC 4616, RFC 4954)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.auth.sasl import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    SaslCancelled,
    SaslError,
    decode_login_field,
    decode_plain,
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_plain_without_and_with_matching_authzid():
    assert decode_plain(b64(b"\0alice@example.org\0s3cret")) == ("alice@example.org", "s3cret")
    assert decode_plain(b64(b"Alice@example.org\0alice@example.org\0pw")) == ("alice@example.org", "pw")


def test_plain_refuses_other_authzid():
    with pytest.raises(SaslError, match="authorization identity"):
        decode_plain(b64(b"admin@example.org\0alice@example.org\0pw"))


@pytest.mark.parametrize("raw, reason", [
    ("not base64!!", "malformed base64"),
    (b64(b"alice\0pw"), "authzid NUL authcid NUL password"),
    (b64(b"\0\0pw"), "empty authentication identity"),
    (b64(b"\0alice\0"), "empty password"),
    (b64(b"\0al\xffice\0pw"), "not valid UTF-8"),
])
def test_plain_malformed(raw, reason):
    with pytest.raises(SaslError, match=reason):
        decode_plain(raw)


def test_cancel_and_login():
    with pytest.raises(SaslCancelled):
        decode_plain("*")
    assert base64.b64decode(LOGIN_USERNAME_CHALLENGE) == b"Username:"
    assert base64.b64decode(LOGIN_PASSWORD_CHALLENGE) == b"Password:"
    assert decode_login_field(b64(b"bob@example.org")) == "bob@example.org"
    with pytest.raises(SaslError, match="LOGIN password is empty"):
        decode_login_field("=", "password")


@given(st.binary(max_size=200))
def test_plain_never_raises_anything_but_sasl_error(raw):
    for candidate in (raw, b64(raw).encode()):
        try:
            user, password = decode_plain(candidate)
        except SaslError:
            continue
        assert user and password
