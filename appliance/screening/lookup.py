"""DNSBL and DNSWL queries: one A query per zone, all zones at once, through the appliance's nameservers.

A lookup never raises: a timeout, SERVFAIL or an unreachable nameserver is a ZoneAnswer with an error, which
counts nothing (fail open). The resolver is dnspython's, set up from the config's dns section as
appliance/dns/resolver.py does, with the screening's own timeout: a DNSBL answer that comes late is worth
less than the greeting it holds up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import dns.asyncresolver
import dns.exception
import dns.resolver

from appliance.config.model import DNSConfig
from appliance.dns.dnsbl import query_name
from appliance.screening.dnsbl import ZoneAnswer


class DNSBLLookup:
    def __init__(self, settings: DNSConfig, timeout: float) -> None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        except dns.resolver.NoResolverConfiguration:
            # Every lookup then fails as an error (logged per client): the screening fails open.
            resolver = dns.asyncresolver.Resolver(configure=False)
        if settings.nameservers:
            resolver.nameservers = list(settings.nameservers)
        resolver.port = settings.port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        self._resolver = resolver

    async def ask(self, ip: str, zones: Iterable[str]) -> dict[str, ZoneAnswer]:
        """Each zone's answer about ``ip``, asked concurrently."""
        names = list(zones)
        answers = await asyncio.gather(*(self._ask(ip, zone) for zone in names))
        return dict(zip(names, answers, strict=True))

    async def _ask(self, ip: str, zone: str) -> ZoneAnswer:
        try:
            name = query_name(ip, zone)
        except ValueError:
            return ZoneAnswer(zone, error=f"{ip!r} is not an IP address")
        try:
            answer = await self._resolver.resolve(name, "A", raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return ZoneAnswer(zone)  # RFC 5782 §2.1: not listed
        except dns.exception.Timeout:
            return ZoneAnswer(zone, error=f"no answer within {self._resolver.lifetime:g}s")
        except dns.resolver.NoNameservers as exc:
            return ZoneAnswer(zone, error=f"no nameserver answered ({_first_line(exc)})")
        except dns.exception.DNSException as exc:
            return ZoneAnswer(zone, error=_first_line(exc))
        except OSError as exc:  # a nameserver address this host cannot reach at all
            return ZoneAnswer(zone, error=f"{exc.__class__.__name__}: {exc}")
        if answer.rrset is None:
            return ZoneAnswer(zone)  # the name exists without an A record: not a listing
        return ZoneAnswer(zone, tuple(rr.to_text() for rr in answer.rrset))


def _first_line(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:300]
