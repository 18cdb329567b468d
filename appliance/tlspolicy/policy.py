"""Per destination domain, what TLS a delivery must get: DANE, else MTA-STS, else opportunistic.

DANE applies to an MX host with usable TLSA records in a DNSSEC-secure MX RRset, and takes precedence over
MTA-STS (RFC 8461 §2). An MTA-STS policy in ``enforce`` mode drops the MX hosts it does not name and
requires TLS with a certificate valid for the MX name (§4, §5); ``testing`` delivers anyway and reports.
Each session's outcome goes to the TLS-RPT results.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import ssl
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from appliance.config.model import OutboundTLSConfig
from appliance.tlspolicy import results
from appliance.tlspolicy.dane import DANEResolver, DNSSECFailure, TLSARecord, verify
from appliance.tlspolicy.mtasts import MTASTS, Policy, PolicyCache, mx_matches
from appliance.tlspolicy.results import NO_RESULTS, AppliedPolicy, Failure, TLSResults

log = logging.getLogger("appliance.tlspolicy")

CACHE_FILE = "mta-sts.sqlite"  # under data_dir


# What the Deliverer sees (delivery.tls.HostTLS, DomainTLS, TLSOutcome: delivery/ and tlspolicy/ share a floor,
# so they meet in those Protocols).
@dataclass(frozen=True)
class TLSFailure:
    """Why a session did not get the TLS its policy asks for (RFC 8460 §4.3 result type)."""

    result_type: str
    reason: str


@dataclass(frozen=True)
class HostTLS:
    """The TLS one MX host must give (see delivery.tls.HostTLS)."""

    required: bool
    enforced: bool
    check: Callable[[Sequence[bytes]], TLSFailure | None]
    reporter: Callable[[TLSFailure | None, str], None]
    refused: TLSFailure | None = None

    def verify(self, chain: Sequence[bytes]) -> TLSFailure | None:
        return self.check(chain)

    def report(self, failure: _Outcome | None, receiving_ip: str) -> None:
        self.reporter(None if failure is None else TLSFailure(failure.result_type, failure.reason), receiving_ip)


@dataclass(frozen=True)
class DomainTLS:
    """Per MX name what it requires; an MX missing is not used."""

    hosts: dict[str, HostTLS | None]


class _Outcome(Protocol):
    @property
    def result_type(self) -> str: ...

    @property
    def reason(self) -> str: ...


class TLSPolicy:
    """The TLS policies of delivery (delivery.tls.TLSPolicies), built from the config's outbound_tls."""

    def __init__(
        self,
        settings: OutboundTLSConfig,
        data_dir: Path,
        nameservers: Sequence[str] = (),
        dns_port: int = 53,
        results_to: TLSResults = NO_RESULTS,
        *,
        https_port: int = 443,
        sending_ip: Callable[[], str] = lambda: "",
    ) -> None:
        """`nameservers`/`dns_port`: the config's dns section (MTA-STS discovery); DANE asks
        `settings.resolver`. `https_port` is 443 except in tests."""
        self.results = results_to
        self.built_from = (settings, tuple(nameservers), dns_port)  # a reload rebuilds it when these change
        self._sending_ip = sending_ip
        self._sts = (MTASTS(PolicyCache(data_dir / CACHE_FILE), nameservers, dns_port, ca_file=settings.ca_file,
                            fetch_timeout=settings.fetch_timeout, https_port=https_port)
                     if settings.mta_sts else None)
        self._dane = (DANEResolver([(hp.host, hp.port) for hp in settings.resolver], settings.fetch_timeout)
                      if settings.dane and settings.resolver else None)
        self._ca_file = settings.ca_file
        self._webpki: Store | None = None  # read at the first MTA-STS verification: most hosts never need it
        self._webpki_read = False

    async def for_domain(self, domain: str, mx_hosts: Sequence[str], port: int) -> DomainTLS | None:
        """What each MX of `domain` requires; None when nothing applies (opportunistic, as without policy)."""
        domain = domain.lower().rstrip(".")
        hosts: dict[str, HostTLS | None] = dict.fromkeys(mx_hosts)
        if self._dane is not None and await self._dane.mx_secure(domain):
            await self._apply_dane(domain, hosts, port)
        if self._sts is not None and any(v is None for v in hosts.values()):
            lookup = await self._sts.lookup(domain)
            if lookup.error is not None and lookup.policy is None:
                self.results.failure(AppliedPolicy(domain, results.STS),
                                     Failure(lookup.error.result_type, failure_reason_code=str(lookup.error)))
            if lookup.policy is not None and lookup.policy.mode != "none":
                self._apply_sts(domain, lookup.policy, hosts)
        if all(v is None for v in hosts.values()) and len(hosts) == len(mx_hosts):
            return None
        return DomainTLS(hosts)

    async def _apply_dane(self, domain: str, hosts: dict[str, HostTLS | None], port: int) -> None:
        assert self._dane is not None
        names = list(hosts)
        found = await asyncio.gather(*(self._dane.tlsa(h, port) for h in names), return_exceptions=True)
        for host, records in zip(names, found, strict=True):
            if isinstance(records, DNSSECFailure):
                applied = AppliedPolicy(domain, results.TLSA)
                failure = TLSFailure(results.DNSSEC_INVALID, f"TLSA lookup for {host} failed: {records}")
                hosts[host] = HostTLS(True, True, lambda chain: None, self._reporter(applied, host), failure)
            elif isinstance(records, BaseException):
                raise records
            elif any(r.usable for r in records):
                hosts[host] = self._dane_host(domain, host, records)
            # no TLSA, insecure, or all unusable: DANE does not apply to this host (RFC 7672 §2.2, §3.1.3)

    def _dane_host(self, domain: str, host: str, records: tuple[TLSARecord, ...]) -> HostTLS:
        usable = tuple(r for r in records if r.usable)
        applied = AppliedPolicy(domain, results.TLSA, policy_string=tuple(str(r) for r in usable),
                                mx_host=(host,))

        def check(chain: Sequence[bytes]) -> TLSFailure | None:
            reason = verify(usable, chain, [host])
            return None if reason is None else TLSFailure(results.VALIDATION_FAILURE, reason)

        return HostTLS(True, True, check, self._reporter(applied, host))

    def _apply_sts(self, domain: str, policy: Policy, hosts: dict[str, HostTLS | None]) -> None:
        applied = AppliedPolicy(domain, results.STS, policy_string=policy.lines, mx_host=policy.mx)
        enforce = policy.mode == "enforce"
        for host in [h for h, v in hosts.items() if v is None]:
            if not policy.matches(host):
                if enforce:
                    del hosts[host]  # §4.1: an MX the policy does not name is not used
                    log.info("MTA-STS: %s is not an MX of %s's policy: not used", host, domain)
                    continue
            hosts[host] = HostTLS(enforce, enforce, self._webpki_check(host), self._reporter(applied, host))

    def _webpki_check(self, host: str) -> Callable[[Sequence[bytes]], TLSFailure | None]:
        def check(chain: Sequence[bytes]) -> TLSFailure | None:
            if not self._webpki_read:
                self._webpki, self._webpki_read = _web_pki_store(self._ca_file), True
            return web_pki_verify(self._webpki, chain, host)

        return check

    def _reporter(self, applied: AppliedPolicy, host: str) -> Callable[[TLSFailure | None, str], None]:
        def report(failure: TLSFailure | None, receiving_ip: str) -> None:
            if failure is None:
                self.results.success(applied)
            else:
                self.results.failure(applied, Failure(failure.result_type, self._sending_ip(), host, receiving_ip,
                                                      failure.reason[:200]))

        return report

    def close(self) -> None:
        if self._sts is not None:
            self._sts.close()


def _web_pki_store(ca_file: Path | None) -> Store | None:
    """The trust anchors of MTA-STS: `ca_file`, or the system's CA bundle. Each certificate is read on its own,
    so that one the parser refuses (the system bundle holds a few odd ones) costs only itself."""
    path = ca_file or Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    try:
        text = path.read_bytes()
    except OSError as exc:
        log.error("MTA-STS: cannot read the CA certificates %s: %s; every certificate fails", path, exc)
        return None
    certs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography's deprecation notes about old roots' encodings
        for block in _PEM_BLOCK.findall(text):
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError as exc:
                log.debug("MTA-STS: %s: a certificate skipped: %s", path, exc)
    if not certs:
        log.error("MTA-STS: no CA certificate in %s; every certificate fails", path)
        return None
    return Store(certs)


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def web_pki_verify(store: Store | None, chain: Sequence[bytes], host: str) -> TLSFailure | None:
    """RFC 8461 §4.2: the certificate chains to a trusted CA and names the MX host (RFC 6125)."""
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return TLSFailure(results.CERTIFICATE_NOT_TRUSTED, f"unreadable certificate: {exc}")
    if not certs:
        return TLSFailure(results.CERTIFICATE_NOT_TRUSTED, "the server sent no certificate")
    leaf = certs[0]
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        return TLSFailure(results.CERTIFICATE_EXPIRED, f"the certificate expired {leaf.not_valid_after_utc:%F}")
    if store is None:
        return TLSFailure(results.CERTIFICATE_NOT_TRUSTED, "no CA certificates to verify with")
    try:
        PolicyBuilder().store(store).time(now).build_server_verifier(x509.DNSName(host)).verify(leaf, certs[1:])
        return None
    except (VerificationError, ValueError) as exc:
        result = results.CERTIFICATE_HOST_MISMATCH if not _names(leaf, host) else results.CERTIFICATE_NOT_TRUSTED
        return TLSFailure(result, f"{host}: {exc}")


def _names(cert: x509.Certificate, host: str) -> bool:
    """The certificate's DNS names include `host` (a leading "*." stands for one label)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return any(mx_matches(name, host) for name in sans.get_values_for_type(x509.DNSName))
