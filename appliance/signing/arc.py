"""ARC sealing (RFC 8617) of the mail this host forwards, with dkimpy's ``arc_sign``.

A forwarder's seal records what this host saw (the Authentication-Results its sender_auth check added in the
same transaction, copied into ARC-Authentication-Results) and signs it, so that the destination can trust
those results though forwarding broke SPF (and perhaps DKIM). The seal uses the RSA key of one fleet domain:
``dkim.arc_domain``, or the first domain of primary.domains, then of the forwarded domains, that has an active
RSA key. dkimpy defines ARC with rsa-sha256 only, and does the RSA itself (pure Python, two signatures a seal):
forwarded mail is a small share, so the seal runs in a worker thread and keeps the event loop free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .keys import KeyStoreError, SigningKey
from .signer import Signer

log = logging.getLogger("appliance.signing")


@dataclass(frozen=True)
class _Traditional:
    pem: bytes  # the key file's bytes
    pkcs1: bytes  # the same key as PKCS#1 PEM, the form dkimpy's ARC signer reads


class ArcSealer:
    """Seals forwarded messages with the key of the first of ``domains`` that has an active RSA key."""

    def __init__(self, signer: Signer, domains: Iterable[str], authserv_id: str) -> None:
        self.signer = signer
        self.domains = tuple(d.lower() for d in domains)
        self.authserv_id = authserv_id
        self._pkcs1: dict[tuple[str, str], _Traditional] = {}

    def key(self) -> SigningKey | None:
        """The sealing key: the active RSA key of the first domain that has one."""
        for domain in self.domains:
            for key in self.signer.active_keys(domain):
                if key.algorithm == "rsa-sha256":
                    return key
        return None

    def seal(self, message: bytes) -> list[tuple[str, str]]:
        """The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results) for the message, as
        (name, value) fields; empty (logged) when there is no key or no Authentication-Results of ours."""
        key = self.key()
        if key is None:
            log.info("not ARC-sealed: none of %s has an active RSA key", ", ".join(self.domains) or "no domain")
            return []
        try:
            fields = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(), self._pkcs1_of(key),
                                   self.authserv_id.encode())
        except (dkim.DKIMException, KeyStoreError, ValueError, UnsupportedAlgorithm) as exc:
            log.warning("not ARC-sealed: %s", exc)
            return []
        except Exception as exc:  # noqa: BLE001 - a seal adds to a message; its failure never refuses one
            log.error("not ARC-sealed: %s: %s", type(exc).__name__, exc)
            return []
        if not fields:
            log.info("not ARC-sealed: no Authentication-Results of %s in the message", self.authserv_id)
        return [_split(field) for field in fields]

    def _pkcs1_of(self, key: SigningKey) -> bytes:
        cached = self._pkcs1.get((key.domain, key.selector))
        if cached is None or cached.pem != key.private_pem:
            private = serialization.load_pem_private_key(key.private_pem, password=None)
            pkcs1 = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption())
            cached = _Traditional(key.private_pem, pkcs1)
            self._pkcs1[(key.domain, key.selector)] = cached
        return cached.pkcs1


def _split(field: bytes) -> tuple[str, str]:
    name, _, value = field.decode("ascii", "replace").partition(":")
    return name.strip(), value.strip()
