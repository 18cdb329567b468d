"""Is one of our sending addresses on a DNS block list? One A query per zone, through the host's resolver.

RFC 5782 §2.1: an address is listed in a zone when the A query of its reversed octets under the zone
(``1.44.0.127.bl.example`` for 127.0.44.1; §2.4: reversed nibbles for IPv6) answers an address in 127.0.0.0/8;
NXDOMAIN means not listed. An answer in 127.255.255.0/24 is the zone's error code (Spamhaus: "query refused",
a public resolver or an unregistered user), never a listing; so is an answer outside 127.0.0.0/8 (a resolver
that rewrites NXDOMAIN). Those, a timeout and SERVFAIL are UNKNOWN: they change nothing, neither suspend an
address nor count towards its return.

The resolver keeps no cache: a delisting must be seen at the next round, not after the listing's TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from appliance.config.model import DNSConfig
from appliance.dns.dnsbl import query_name, split_answers

LISTED = "listed"
CLEAR = "clear"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one zone says of one address: LISTED (with the codes), CLEAR, or UNKNOWN (with the reason)."""

    zone: str
    outcome: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.zone}: {self.outcome}" + (f" ({self.detail})" if self.detail else "")


def classify(zone: str, answers: tuple[str, ...]) -> Verdict:
    """The verdict of the A records a zone answered (empty: the name exists without an A record: clear)."""
    listed, errors = split_answers(answers)
    if listed:
        return Verdict(zone, LISTED, ", ".join(map(str, listed)))
    if errors:
        return Verdict(zone, UNKNOWN, f"error code {', '.join(errors)}, not a listing")
    return Verdict(zone, CLEAR)


class BlocklistLookup:
    """The lookups of one round, with the nameservers and timeout of the config's dns section."""

    def __init__(self, settings: DNSConfig) -> None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)  # every lookup is then UNKNOWN
        if settings.nameservers:
            resolver.nameservers = list(settings.nameservers)
        resolver.port = settings.port
        resolver.timeout = settings.timeout
        resolver.lifetime = settings.timeout
        self._resolver = resolver

    async def ask(self, ip: str, zone: str) -> Verdict:
        try:
            answer = await self._resolver.resolve(query_name(ip, zone), "A", raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN:
            return Verdict(zone, CLEAR)
        except dns.exception.Timeout:
            return Verdict(zone, UNKNOWN, f"no answer within {self._resolver.lifetime:g}s")
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return Verdict(zone, UNKNOWN, (str(exc) or exc.__class__.__name__).splitlines()[0][:200])
        if answer.rrset is None:
            return Verdict(zone, CLEAR)
        return classify(zone, tuple(rr.to_text() for rr in answer.rrset))
