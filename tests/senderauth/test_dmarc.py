"""DMARC's parts by themselves (RFC 7489): the record, the organisational domain, alignment, From domains; and
the policy discovery, alignment and sampling against a real BIND."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from peers.named import start_named

from appliance.config.model import DNSConfig
from appliance.senderauth.dmarc import (
    DmarcChecker,
    Record,
    aligned,
    from_domains,
    organizational_domain,
    parse_record,
)
from appliance.senderauth.resolver import Lookups


def test_a_record_needs_v_first_and_a_known_p() -> None:
    assert parse_record("v=DMARC1; p=reject; sp=none; adkim=s; pct=50") == Record("reject", "none", True, False, 50)
    assert parse_record("v=DMARC1;p=Quarantine") == Record("quarantine", "quarantine", False, False, 100)
    assert parse_record("p=reject; v=DMARC1") is None  # RFC 7489 §6.6.3: v= first
    assert parse_record("v=DMARC1; p=bounce") is None
    assert parse_record("v=DMARC1") is None
    assert parse_record("v=DMARC1; p=none; sp=odd; pct=lots") == Record("none", "none", False, False, 100)
    assert parse_record("v=spf1 -all") is None


def test_the_organisational_domain_comes_from_the_public_suffix_list() -> None:
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("Mail.Example.COM.") == "example.com"
    assert organizational_domain("co.uk") == "co.uk"  # a public suffix is its own
    assert aligned("news.example.co.uk", "bounce.example.co.uk", strict=False)
    assert not aligned("news.example.co.uk", "bounce.example.co.uk", strict=True)
    assert not aligned("example.co.uk", "other.co.uk", strict=False)
    assert not aligned("example.org", "", strict=False)


def test_from_domains_are_each_address_once() -> None:
    assert from_domains(["Bob <bob@Example.org>, ann@example.org", "x@other.test"]) == ["example.org", "other.test"]
    assert from_domains(["undisclosed-recipients:;", "no address here"]) == []


ZONES = {
    "org.test": '_dmarc IN TXT "v=DMARC1; p=reject; sp=quarantine; aspf=s"\n',
    "half.test": '_dmarc IN TXT "v=DMARC1; p=reject; pct=50"\n',
    "twice.test": '_dmarc IN TXT "v=DMARC1; p=reject"\n_dmarc IN TXT "v=DMARC1; p=none"\n',
}


@pytest.fixture
def checker(tmp_path: Path):
    named = start_named(tmp_path / "named", ZONES)
    lookups = Lookups(DNSConfig(nameservers=(named.address,), port=named.port, timeout=2.0))
    yield DmarcChecker(lookups, sample=random.Random(7))
    named.stop()


async def test_a_subdomain_gets_the_organisational_domains_sp(checker: DmarcChecker) -> None:
    result = await checker.check(["a@news.org.test"], {}, [])
    assert (result.result, result.policy, result.disposition) == ("fail", "quarantine", "quarantine")
    # aspf=s: a MAIL FROM of a sibling subdomain does not align; a DKIM d= of the organisation does (adkim=r)
    assert (await checker.check(["a@news.org.test"], {"bounce.org.test": "pass"}, [])).result == "fail"
    assert (await checker.check(["a@news.org.test"], {}, ["org.test"])).result == "pass"
    assert (await checker.check(["a@news.org.test"], {"news.org.test": "softfail"}, [])).result == "fail"


async def test_two_records_are_none_and_pct_samples(checker: DmarcChecker) -> None:
    assert (await checker.check(["a@twice.test"], {}, [])).result == "none"
    dispositions = {(await checker.check(["a@half.test"], {}, [])).disposition for _ in range(20)}
    assert dispositions == {"reject", "quarantine"}  # RFC 7489 §6.6.4: outside the sample, the next one down


async def test_the_worst_of_several_from_domains_counts(checker: DmarcChecker) -> None:
    result = await checker.check(["a@unlisted.test, b@org.test"], {}, [])
    assert (result.result, result.from_domain, result.disposition) == ("fail", "org.test", "reject")
    assert (await checker.check(["nobody"], {}, [])).result == "permerror"
