"""DNSBL and DNSWL answers, without the lookups: the name to ask, what an answer means, the score.

RFC 5782 §2.1: a client address is listed in a zone when the A query of its reversed octets under the zone
(``2.0.0.127.bl.example.org`` for 127.0.0.2; §2.4: reversed nibbles for IPv6) has an answer in 127.0.0.0/8;
NXDOMAIN means not listed. Spamhaus answers 127.255.255.0/24 ("query refused": a public or unregistered
resolver, a typing error in the zone) in the same record type; those are errors and never listings, as is
anything outside 127.0.0.0/8 (a resolver that rewrites NXDOMAIN into an advertising address). The score
adds the weight of each configured site whose zone answered one of the site's codes, as Postfix's
postscreen_dnsbl_sites does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.config.model import CodeRange, DNSBLSite
from appliance.dns.dnsbl import split_answers


@dataclass(frozen=True, slots=True)
class ZoneAnswer:
    """What one zone said of one client: its A records (empty: not listed), or why it said nothing."""

    zone: str
    addresses: tuple[str, ...] = ()
    error: str | None = None  # a timeout, SERVFAIL, an unreachable nameserver: counts nothing

    @property
    def codes(self) -> tuple[ipaddress.IPv4Address, ...]:
        """The answers that are listings: in 127.0.0.0/8 and not in 127.255.255.0/24."""
        return split_answers(self.addresses)[0]

    @property
    def refusals(self) -> tuple[str, ...]:
        """The answers that are errors (127.255.255.0/24, outside 127.0.0.0/8, not an address)."""
        return split_answers(self.addresses)[1]

    @property
    def cacheable(self) -> bool:
        """A clean answer (listed or not) is kept for the cache's ttl; errors are asked again next time."""
        return self.error is None and not self.refusals


def matches(codes: tuple[CodeRange, ...], answer: Iterable[ipaddress.IPv4Address]) -> bool:
    """True when one of the answered codes is one the site counts (any listing when it names none)."""
    return any(not codes or any(first <= code <= last for first, last in codes) for code in answer)


@dataclass(frozen=True, slots=True)
class Score:
    """The sum of the weights of the sites that list a client, and which zones did."""

    total: float
    blocked_by: tuple[str, ...]  # zones of positive weight that list the client, in config order
    allowed_by: tuple[str, ...]  # zones of negative weight (DNSWL) that list it
    errors: tuple[ZoneAnswer, ...]  # zones whose answer counted nothing: failures and refusal codes


def score(sites: Iterable[DNSBLSite], answers: Mapping[str, ZoneAnswer]) -> Score:
    """The score of one client from each zone's answer; a zone missing from ``answers`` counts nothing."""
    total = 0.0
    blocked: list[str] = []
    allowed: list[str] = []
    for site in sites:
        answer = answers.get(site.zone)
        if answer is None or not matches(site.codes, answer.codes):
            continue
        total += site.weight
        names = blocked if site.weight > 0 else allowed
        if site.zone not in names:
            names.append(site.zone)
    errors = tuple(answer for answer in answers.values() if not answer.cacheable)
    return Score(total, tuple(blocked), tuple(allowed), errors)


def zones(sites: Iterable[DNSBLSite]) -> tuple[str, ...]:
    """Each zone once, in config order: a zone listed with several code sets is asked once."""
    return tuple(dict.fromkeys(site.zone for site in sites))
