"""SPF (RFC 7208) of the MAIL FROM and HELO identities, by pyspf on the appliance's resolver.

pyspf asks DNS through its module function ``spf.DNSLookup`` (dnspython's default resolver, i.e. the host's
resolv.conf). It is replaced here, once, by a function that asks the resolver of the calling thread: the
sender-authentication threads (resolver.Lookups.run) carry a resolver of the config's dns section; any other
thread gets pyspf's own lookup, as before.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver
import spf

from .resolver import Lookups

# RFC 7208 §4.6.4: at most 20 s for one check (the per-lookup timeout is config.dns.timeout).
SPF_TIME_LIMIT = 20.0
_local = threading.local()
_pyspf_lookup: Callable[..., Any] = spf.DNSLookup


@dataclass(frozen=True, slots=True)
class SpfResult:
    """One identity's result (RFC 7208 §2.6) and pyspf's explanation, for the Authentication-Results comment."""

    result: str  # pass fail softfail neutral none temperror permerror
    identity: str  # "mailfrom" or "helo" (RFC 8601 §2.7.2: smtp.mailfrom / smtp.helo)
    domain: str  # the domain checked
    explanation: str


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = 30.0) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNSLookup contract: [((name, type), value), ...], [] for NXDOMAIN or no answer, spf.TempError for
    a failure that may pass (pyspf's own dnspython lookup, with the thread's resolver and every other DNS error
    mapped to TempError rather than escaping)."""
    resolver: dns.resolver.Resolver | None = getattr(_local, "resolver", None)
    if resolver is None:
        return list(_pyspf_lookup(name, qtype, strict, timeout))
    try:
        answer = resolver.resolve(name, qtype, lifetime=min(timeout, resolver.lifetime), search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.name.NameTooLong, dns.name.EmptyLabel, dns.name.LabelTooLong):
        return []
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {exc.__class__.__name__}: {exc}") from None
    found: list[tuple[tuple[str, str], Any]] = []
    for rdata in answer:
        if qtype in ("A", "AAAA"):
            value: Any = rdata.address
        elif qtype == "MX":
            value = (rdata.preference, rdata.exchange)
        elif qtype == "PTR":
            value = rdata.target.to_text(True)
        elif qtype in ("TXT", "SPF"):
            value = rdata.strings
        else:
            continue
        found.append(((name, qtype), value))
    return found


spf.DNSLookup = _lookup


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _is_domain(name: str) -> bool:
    """A HELO name SPF can check: a dotted name, not an address literal (RFC 7208 §2.3)."""
    if not name or "." not in name.strip(".") or name.startswith("["):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


class SpfChecker:
    """SPF checks in the sender-authentication thread pool, each thread with its own resolver."""

    def __init__(self, lookups: Lookups) -> None:
        self._lookups = lookups

    def _check(self, ip: str, sender: str, helo: str) -> tuple[str, str]:
        resolver = getattr(_local, "resolver", None)
        if resolver is None:
            _local.resolver = resolver = self._lookups.sync_resolver()
        result, _code, explanation = spf.query(
            i=ip, s=sender, h=helo, timeout=self._lookups.settings.timeout, querytime=SPF_TIME_LIMIT).check()
        return str(result), str(explanation)

    async def mail_from(self, ip: str, sender: str, helo: str) -> SpfResult:
        """The MAIL FROM identity; for the null reverse-path, postmaster@HELO (RFC 7208 §2.4)."""
        if not sender:
            return await self.helo(ip, helo, identity="mailfrom")
        domain = _domain(sender)
        result, explanation = await self._lookups.run(self._check, ip, sender, helo)
        return SpfResult(result, "mailfrom", domain, explanation)

    async def helo(self, ip: str, helo: str, identity: str = "helo") -> SpfResult:
        """The HELO identity (RFC 7208 §2.3): "none" for a name that is not a domain."""
        name = helo.rstrip(".").lower()
        if not _is_domain(name):
            return SpfResult("none", identity, name, "the HELO name is not a domain")
        result, explanation = await self._lookups.run(self._check, ip, f"postmaster@{name}", name)
        return SpfResult(result, identity, name, explanation)
