"""DMARC (RFC 7489): the policy record of the From domain, identifier alignment, and the result.

Our own code: the DMARC logic is short and the package that has it (authheaders) reads the public suffix list
of 2019 (publicsuffix2) and DNS through the host's resolver. The organisational domain (RFC 7489 §3.2) comes
from ``publicsuffixlist``, which ships the list (no download at run time).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import getaddresses

from publicsuffixlist import PublicSuffixList

from .resolver import Lookups, TempError

POLICIES = ("none", "quarantine", "reject")
_psl: PublicSuffixList | None = None


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix and one label more; a public suffix itself is its own."""
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()  # some 30 ms to read: once per process, at the first message
    domain = domain.lower().rstrip(".")
    return _psl.privatesuffix(domain) or domain


@dataclass(frozen=True, slots=True)
class Record:
    """The tags of a DMARC record that decide (RFC 7489 §6.3)."""

    policy: str  # p=
    subdomain_policy: str  # sp= (p= when absent)
    strict_dkim: bool  # adkim=s
    strict_spf: bool  # aspf=s
    percent: int  # pct=


def parse_record(text: str) -> Record | None:
    """A DMARC record, or None when ``text`` is not one (RFC 7489 §6.6.3: v=DMARC1 first; §6.3: a p= that is
    missing or invalid makes no record to act on)."""
    tags: dict[str, str] = {}
    for index, part in enumerate(text.split(";")):
        name, equals, content = part.partition("=")
        name, content = name.strip().lower(), content.strip()
        if index == 0:
            if (name, content) != ("v", "DMARC1"):
                return None
            continue
        if not name:
            continue
        if not equals:
            return None
        tags.setdefault(name, content)
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        return None
    subdomain = tags.get("sp", policy).lower()
    try:
        percent = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        percent = 100
    return Record(policy, subdomain if subdomain in POLICIES else policy,
                  tags.get("adkim", "r").lower() == "s", tags.get("aspf", "r").lower() == "s", percent)


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass fail none temperror permerror
    from_domain: str
    policy: str = ""  # the published policy that applies (p= or sp=), "" without a record
    disposition: str = "none"  # what the policy asks for this message: none quarantine reject (pct applied)
    reason: str = ""


def from_domains(from_fields: Iterable[str]) -> list[str]:
    """The domains of the From fields' addresses (RFC 7489 §6.6.1), lower-cased, each once."""
    found: list[str] = []
    for _, address in getaddresses(list(from_fields)):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if address and "@" in address and domain and domain not in found:
            found.append(domain)
    return found


def aligned(domain: str, identifier: str, strict: bool) -> bool:
    """RFC 7489 §3.1: the same domain (strict), or the same organisational domain (relaxed)."""
    identifier = identifier.lower().rstrip(".")
    if not identifier:
        return False
    if strict:
        return domain == identifier
    return organizational_domain(domain) == organizational_domain(identifier)


class DmarcChecker:
    def __init__(self, lookups: Lookups, sample: random.Random | None = None) -> None:
        self._lookups = lookups
        self._sample = sample or random.Random()

    async def _record(self, domain: str) -> Record | None:
        """The one DMARC record at _dmarc.``domain`` (RFC 7489 §6.6.3: several records are none)."""
        records = [r for r in (parse_record(t.decode("utf-8", "replace")) for t in
                               await self._lookups.txt(f"_dmarc.{domain}")) if r is not None]
        return records[0] if len(records) == 1 else None

    async def discover(self, domain: str) -> tuple[Record | None, bool]:
        """The record for ``domain``, and whether it is the organisational domain's (RFC 7489 §6.6.3)."""
        record = await self._record(domain)
        if record is not None:
            return record, False
        organisation = organizational_domain(domain)
        if organisation == domain:
            return None, False
        return await self._record(organisation), True

    async def check(self, from_fields: Iterable[str], spf_domains: Mapping[str, str],
                    dkim_domains: Iterable[str]) -> DmarcResult:
        """The DMARC result of a message: ``spf_domains`` maps the SPF-checked domains to their results (the
        MAIL FROM domain, or HELO's for the null reverse-path), ``dkim_domains`` the d= of the signatures that
        passed. With several From domains (RFC 7489 §6.6.1), each is checked and the worst result counts."""
        domains = from_domains(from_fields)
        if not domains:
            return DmarcResult("permerror", "", reason="no From address with a domain")
        passed = [domain for domain, result in spf_domains.items() if result == "pass"]
        signers = list(dkim_domains)
        results = await asyncio.gather(*(self._one(domain, passed, signers) for domain in domains))
        order = {"fail": 0, "temperror": 1, "permerror": 2, "pass": 3, "none": 4}
        return min(results, key=lambda r: (order[r.result], POLICIES.index(r.disposition) * -1))

    async def _one(self, domain: str, spf_passed: list[str], signers: list[str]) -> DmarcResult:
        try:
            record, inherited = await self.discover(domain)
        except TempError as exc:
            return DmarcResult("temperror", domain, reason=str(exc))
        if record is None:
            return DmarcResult("none", domain)
        policy = record.subdomain_policy if inherited else record.policy
        if (any(aligned(domain, d, record.strict_spf) for d in spf_passed)
                or any(aligned(domain, d, record.strict_dkim) for d in signers)):
            return DmarcResult("pass", domain, policy)
        disposition = policy
        if record.percent < 100 and self._sample.randrange(100) >= record.percent:
            # RFC 7489 §6.6.4: outside the sample, the next policy down applies.
            disposition = POLICIES[max(0, POLICIES.index(policy) - 1)]
        return DmarcResult("fail", domain, policy, disposition, "no aligned SPF or DKIM pass")
