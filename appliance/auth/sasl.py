"""SASL PLAIN and LOGIN decoding shared by SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH.

Only decoding lives here; each protocol sends its own continuation prompts ("334 ", "+ ").
"""

from __future__ import annotations

import base64
import binascii

#: LOGIN's server challenges (de facto standard, draft-murchison-sasl-login): "Username:", "Password:".
LOGIN_USERNAME_CHALLENGE = base64.b64encode(b"Username:").decode("ascii")
LOGIN_PASSWORD_CHALLENGE = base64.b64encode(b"Password:").decode("ascii")


_PLAIN_FIELDS = ("authzid", "authcid", "password")


class SaslError(ValueError):
    """A malformed SASL response; the message is safe to send to the client (no secrets in it)."""


class SaslCancelled(SaslError):
    """The client answered "*" to cancel the exchange (RFC 4954 §4, RFC 3501 §6.2.2, RFC 5034 §4)."""


def decode_response(data: str | bytes) -> bytes:
    """Base64-decode one client response strictly; "=" is the empty initial response (RFC 4954 §4)."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    if text == "*":
        raise SaslCancelled("authentication cancelled by the client")
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("malformed base64 in SASL response") from None


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not valid UTF-8") from None


def decode_plain(data: str | bytes) -> tuple[str, str]:
    """Decode an AUTH PLAIN response into (authcid, password).

    RFC 4616 §2: message = [authzid] NUL authcid NUL passwd. We do not support acting as another user, so
    a non-empty authzid must name the same user as authcid (compared case-insensitively, like lookups).
    """
    raw = decode_response(data)
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN response must be authzid NUL authcid NUL password (RFC 4616 §2)")
    authzid, authcid, password = (_utf8(part, name) for part, name in zip(parts, _PLAIN_FIELDS, strict=True))
    if not authcid:
        raise SaslError("PLAIN response has an empty authentication identity")
    if not password:
        raise SaslError("PLAIN response has an empty password")
    if authzid and authzid.lower() != authcid.lower():
        raise SaslError("authorization identity differs from the authentication identity (not supported)")
    return authcid, password


def decode_login_field(data: str | bytes, what: str = "username") -> str:
    """Decode one AUTH LOGIN answer (the username or the password)."""
    value = _utf8(decode_response(data), what)
    if not value:
        raise SaslError(f"LOGIN {what} is empty")
    if "\x00" in value:
        raise SaslError(f"LOGIN {what} contains NUL")
    return value
