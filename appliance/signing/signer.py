"""DKIM signatures (RFC 6376 rsa-sha256, RFC 8463 ed25519-sha256) of the mail this host sends for a domain.

Every active key of the signing domain signs (dual signatures: a receiver that knows only rsa-sha256 still finds
one it can check), relaxed/relaxed, with a t= timestamp and no l= (a body length lets anyone append to the body).
dkimpy does the canonicalisation, the header hash and the folding; the private-key operation is OpenSSL's
(`cryptography`): dkimpy's own RSA is pure Python and costs ten times as much per signature (README, dependency
list). Keys are parsed once and kept as long as the key file's bytes stay the same.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import getaddresses

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from appliance.config.model import DKIM_SIGNED_HEADERS

from .keys import KeyStore, KeyStoreError, SigningKey

log = logging.getLogger("appliance.signing")

SIGNED_HEADERS = DKIM_SIGNED_HEADERS  # RFC 6376 §5.4.1; dkim.headers replaces it
# RFC 6376 §8.15: these are named once more than they occur (once when absent), so that none can be added to
# the signed message (a second From: would show a forged address to a reader while the signature passes).
OVERSIGNED: frozenset[str] = frozenset(("from", "subject", "to", "cc", "date", "reply-to", "message-id"))

_RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_NAME = b"DKIM-Signature"


class NotSignable(Exception):
    """The message cannot be signed: its header section does not parse, or its From is not one address."""


@dataclass(frozen=True)
class _Loaded:
    pem: bytes
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def from_domain(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The domain of the one address of the one From field (lower case), or NotSignable saying why not."""
    fields = [value for name, value in headers if name.lower() == b"from"]
    if len(fields) != 1:
        raise NotSignable(f"{len(fields)} From fields")
    text = fields[0].decode("utf-8", "replace").replace("\r\n", "")
    addresses = [address for _, address in getaddresses([text]) if address]
    if len(addresses) != 1:
        raise NotSignable(f"From holds {len(addresses)} addresses")
    local, at, domain = addresses[0].rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not at or not local or not domain or not re.fullmatch(r"[a-z0-9.-]+", domain):
        raise NotSignable(f"From address {addresses[0]!r} has no domain to sign for")
    return domain


def header_list(headers: Iterable[tuple[bytes, bytes]], signed: Iterable[str] = SIGNED_HEADERS) -> list[bytes]:
    """The h= names: each signed field as often as it occurs, the oversigned ones once more (§8.15)."""
    wanted = set(signed)
    names = [name.lower() for name, _ in headers if name.lower().decode("ascii", "replace") in wanted]
    extra = [name.encode() for name in sorted(OVERSIGNED & wanted)]
    return names + extra


class Signer:
    """Signs messages for the domains that have active keys in ``keys``."""

    def __init__(self, keys: KeyStore, headers: tuple[str, ...] = SIGNED_HEADERS,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.headers = headers
        self._clock = clock
        self._parsed: dict[tuple[str, str], _Loaded] = {}

    def active_keys(self, domain: str) -> tuple[SigningKey, ...]:
        """The domain's active keys; none (logged) when the key store cannot be read."""
        try:
            return self.keys.signing_keys(domain)
        except KeyStoreError as exc:
            log.error("domain=%s not signed: %s", domain, exc)
            return ()

    def signatures(self, message: bytes, domain: str | None = None) -> list[bytes]:
        """The DKIM-Signature fields (each ``DKIM-Signature: ...\\r\\n``) for the message, one per active key of
        ``domain`` (default: the From domain); empty when the domain has none. NotSignable for a message whose
        header section or From cannot be signed."""
        try:
            headers, body = dkim.rfc822_parse(message)
        except dkim.MessageFormatError as exc:
            raise NotSignable(f"header section does not parse: {exc}") from exc
        if domain is None:
            domain = from_domain(headers)
        keys = self.active_keys(domain)
        if not keys:
            return []
        return self._sign(headers, body, keys)

    def _sign(self, headers: list, body: bytes, keys: tuple[SigningKey, ...]) -> list[bytes]:
        include = header_list(headers, self.headers)
        canonical = _RELAXED.canonicalize_headers(headers)
        body_hash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
        now = str(int(self._clock())).encode("ascii")
        return [self._one(canonical, include, body_hash, now, key) for key in keys]

    def _one(self, canonical: list, include: list[bytes], body_hash: bytes, now: bytes, key: SigningKey) -> bytes:
        algorithm = key.algorithm.encode("ascii")
        # As dkimpy does: h= names apart by " : " so that folding breaks lines between names, and b= held by a
        # placeholder while the field is folded, so that the field hashed is the field sent (relaxed folds).
        fields = [(b"v", b"1"), (b"a", algorithm), (b"c", b"relaxed/relaxed"), (b"d", key.domain.encode()),
                  (b"s", key.selector.encode()), (b"t", now), (b"h", b" : ".join(include)), (b"bh", body_hash),
                  (b"b", b"0" * 60)]
        unsigned = dkim.RE_BTAG.sub(b"\\1", dkim.fold(b"; ".join(b"=".join(f) for f in fields),
                                                      namelen=len(_NAME)))
        digest = hashlib.sha256()
        dkim.hash_headers(digest, _RELAXED, canonical, include, (_NAME, b" " + unsigned), dict(fields))
        loaded = self._key(key)
        if isinstance(loaded, rsa.RSAPrivateKey):
            signature = loaded.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:  # RFC 8463 §3: Ed25519 (pure) over the SHA-256 hash of the canonicalised header
            signature = loaded.sign(digest.digest())
        fields[-1] = (b"b", base64.b64encode(signature))
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(_NAME))
        return _NAME + b": " + value

    def _key(self, key: SigningKey) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        """The parsed private key, parsed again only when the key file's bytes change."""
        loaded = self._parsed.get((key.domain, key.selector))
        if loaded is None or loaded.pem != key.private_pem:
            parsed = serialization.load_pem_private_key(key.private_pem, password=None)
            if not isinstance(parsed, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
                raise KeyStoreError(f"{key.domain}/{key.selector}.pem: not an RSA or Ed25519 key")
            loaded = _Loaded(key.private_pem, parsed)
            self._parsed[(key.domain, key.selector)] = loaded
        return loaded.key

    def sign(self, message: bytes) -> bytes:
        """The message with signatures for its From domain's active keys at the top, or unchanged when it has
        none or cannot be signed (what this host writes itself: DSNs, TLS reports)."""
        try:
            found = self.signatures(message)
        except (NotSignable, KeyStoreError, ValueError) as exc:
            log.info("own message not signed: %s", exc)
            return message
        return b"".join(found) + message

    def resign(self, message: bytes) -> bytes:
        """The message with the signatures of our keys for its From domain made again (after a conversion, such
        as the 7-bit downgrade, changed what they cover: RFC 6376 §5.3); others' signatures stay as they are."""
        try:
            headers, _ = dkim.rfc822_parse(message)
            keys = self.active_keys(from_domain(headers))
        except (NotSignable, dkim.MessageFormatError):
            return message
        if not keys:
            return message
        ours = {(k.domain.lower(), k.selector.lower()) for k in keys}
        stripped = _drop_signatures(message, ours)
        if stripped == message:
            return message  # we had not signed it (mail from outside): it is not ours to sign now
        return self.sign(stripped)


_TAG = re.compile(rb"(?:^|;)\s*([ds])\s*=\s*([^;\s]+)")


def _drop_signatures(message: bytes, ours: set[tuple[str, str]]) -> bytes:
    """The message without the DKIM-Signature fields made by the (domain, selector) keys in ``ours``."""
    end = message.find(b"\r\n\r\n")
    head, rest = (message, b"") if end < 0 else (message[:end + 2], message[end + 2:])
    fields = re.split(rb"\r\n(?![ \t])", head)
    kept = []
    for field in fields:
        name, _, value = field.partition(b":")
        if name.strip().lower() == b"dkim-signature":
            tags = {k.decode(): v.decode("ascii", "replace").lower()
                    for k, v in _TAG.findall(value.replace(b"\r\n", b""))}
            if (tags.get("d", ""), tags.get("s", "")) in ours:
                continue
        kept.append(field)
    return b"\r\n".join(kept) + rest
