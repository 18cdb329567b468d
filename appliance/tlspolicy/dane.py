"""DANE for SMTP (RFC 7672): TLSA records of the MX hosts through a DNSSEC-validating resolver, and the
check of the server's certificates against them.

The resolver (outbound_tls.resolver, e.g. a local unbound) validates; its AD bit is trusted (RFC 6698 §4.1
allows that for a trusted, local resolver). Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (§3.1.3).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.rcode
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

log = logging.getLogger("appliance.tlspolicy")

DANE_TA, DANE_EE = 2, 3
USABLE_USAGES = (DANE_TA, DANE_EE)  # PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (§3.1.3)


class DNSSECFailure(Exception):
    """The validating resolver could not give a secure answer (SERVFAIL: bogus data, or no answer)."""


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in USABLE_USAGES and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


class DANEResolver:
    """Lookups through the validating resolver, asking for DNSSEC (DO) and reading its AD bit."""

    def __init__(self, nameservers: Sequence[tuple[str, int]], timeout: float = 5.0) -> None:
        self._resolvers = []
        for host, port in nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = port
            resolver.lifetime = timeout
            resolver.use_edns(0, dns.flags.DO, 1232)
            resolver.flags = dns.flags.RD | dns.flags.AD  # RFC 6840 §5.7: AD in a query asks for AD back
            resolver.cache = dns.resolver.Cache()
            self._resolvers.append(resolver)

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, None for a name that does not exist; DNSSECFailure for SERVFAIL or no answer."""
        last: Exception | None = None
        for resolver in self._resolvers:
            try:
                return await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
            except dns.resolver.NXDOMAIN:
                return None
            except dns.exception.DNSException as exc:
                last = exc
        raise DNSSECFailure(f"{name} {rdtype}: {last}")

    async def mx_secure(self, domain: str) -> bool:
        """True when the MX RRset of `domain` is DNSSEC-validated (RFC 7672 §2.2.1: else DANE does not apply)."""
        try:
            answer = await self._resolve(f"{domain.rstrip('.')}.", "MX")
        except DNSSECFailure as exc:
            log.info("DANE: MX of %s not validated: %s", domain, exc)
            return False
        return answer is not None and bool(answer.response.flags & dns.flags.AD)

    async def tlsa(self, host: str, port: int) -> tuple[TLSARecord, ...]:
        """The secure TLSA records of `host` (empty: none, or not signed); DNSSECFailure when the lookup
        fails, which is never a reason to go plaintext (§2.2)."""
        answer = await self._resolve(f"_{port}._tcp.{host.rstrip('.')}.", "TLSA")
        if answer is None or answer.rrset is None or not answer.response.flags & dns.flags.AD:
            return ()
        return tuple(TLSARecord(rr.usage, rr.selector, rr.mtype, bytes(rr.cert))
                     for rr in answer.rrset)


def _digest(record: TLSARecord, cert: x509.Certificate) -> bytes:
    if record.selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    if record.mtype == 1:
        return hashlib.sha256(data).digest()
    if record.mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(record: TLSARecord, cert: x509.Certificate) -> bool:
    return _digest(record, cert) == record.data


def verify(records: Sequence[TLSARecord], chain: Sequence[bytes], names: Sequence[str]) -> str | None:
    """None when the chain the server sent satisfies one usable record; else why not.

    DANE-EE (§3.1.1): the leaf matches; no name or expiry check. DANE-TA (§3.1.2): a certificate of the chain
    matches, and the leaf chains to it with a name check against `names` (§3.2.2: the MX host name).
    """
    usable = [r for r in records if r.usable]
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return f"unreadable certificate from the server: {exc}"
    if not certs:
        return "the server sent no certificate"
    leaf = certs[0]
    if any(r.usage == DANE_EE and _matches(r, leaf) for r in usable):
        return None
    for record in (r for r in usable if r.usage == DANE_TA):
        for anchor in certs:
            if _matches(record, anchor) and _chains_to(leaf, certs[1:], anchor, names):
                return None
    return f"no TLSA record matches the certificate chain ({len(certs)} certificates)"


def _chains_to(leaf: x509.Certificate, intermediates: list[x509.Certificate], anchor: x509.Certificate,
               names: Sequence[str]) -> bool:
    """The leaf chains to `anchor` and names one of `names` (cryptography's X.509 path validation)."""
    now = datetime.datetime.now(datetime.UTC)
    for name in names:
        try:
            verifier = PolicyBuilder().store(Store([anchor])).time(now).build_server_verifier(x509.DNSName(name))
            verifier.verify(leaf, [c for c in intermediates if c != anchor])
            return True
        except (VerificationError, ValueError) as exc:
            log.debug("DANE-TA: %s does not chain for %s: %s", leaf.subject.rfc4514_string(), name, exc)
    return False
