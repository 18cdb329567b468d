"""The screening section as an administrator writes it: the fixed keys, the return codes, and one-line errors."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import ConfigError, parse_config
from appliance.config.model import DNSBLSite, ScreeningConfig

GATEWAY = {"hostname": "gw.example.net", "roles": ["incoming_gateway"],
           "incoming_gateway": {"domains": {"example.net": {"destinations": ["mail.example.net"]}}}}
A = ipaddress.IPv4Address


def load(screening: Any) -> ScreeningConfig:
    return parse_config(yaml.safe_dump({**GATEWAY, "screening": screening}), source="f.yml",
                        base_dir=Path("/etc/mf"), check_host=False).screening


def error(screening: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(screening)
    text = str(info.value)
    assert "\n" not in text and text.startswith("f.yml: screening")
    return text


def test_the_keys_of_the_plan_with_their_defaults() -> None:
    screening = load({"pregreet": {"enabled": True, "wait": "2s", "ttl": "12h"}, "dnsbl": {
        "sites": [{"zone": "Zen.Spamhaus.ORG.", "weight": 2},
                  {"zone": "bl.example.org", "weight": 1.5, "codes": ["127.0.0.2", "127.0.0.4-127.0.0.7"]},
                  {"zone": "list.dnswl.org", "weight": -2, "codes": ["127.0.0.0/16"]},
                  {"zone": "bl2.example.org"}],
        "threshold": 3, "allow_threshold": -1.5, "timeout": "2s", "ttl": "0s"}})
    assert (screening.pregreet.enabled, screening.pregreet.wait, screening.pregreet.ttl) == (True, 2.0, 43200.0)
    zen, bl, wl, bl2 = screening.dnsbl.sites
    assert zen == DNSBLSite("zen.spamhaus.org", 2.0)
    assert bl.codes == ((A("127.0.0.2"), A("127.0.0.2")), (A("127.0.0.4"), A("127.0.0.7")))
    assert wl.codes == ((A("127.0.0.0"), A("127.0.255.255")),) and wl.weight == -2.0
    assert bl2 == DNSBLSite("bl2.example.org", 1.0, ())
    dnsbl = screening.dnsbl
    assert (dnsbl.threshold, dnsbl.allow_threshold, dnsbl.timeout, dnsbl.ttl) == (3.0, -1.5, 2.0, 0.0)
    assert load(None) == ScreeningConfig() and not ScreeningConfig().pregreet.enabled


@pytest.mark.parametrize(("screening", "expected"), [
    ({"postscreen": {}}, "screening.postscreen: unknown key (expected one of pregreet, dnsbl)"),
    ({"pregreet": {"enable": True}}, "screening.pregreet.enable: unknown key"),
    ({"pregreet": {"enabled": "yes"}}, "screening.pregreet.enabled: expected true or false"),
    ({"pregreet": {"wait": 6}}, "screening.pregreet.wait: expected a duration"),
    ({"pregreet": {"wait": "0s"}}, "screening.pregreet.wait: duration must be positive"),
    ({"dnsbl": {"sites": "zen.spamhaus.org"}}, "screening.dnsbl.sites: expected a list"),
    ({"dnsbl": {"sites": ["zen.spamhaus.org"]}}, "screening.dnsbl.sites[0]: expected a mapping"),
    ({"dnsbl": {"sites": [{"weight": 1}]}}, "screening.dnsbl.sites[0].zone: required"),
    ({"dnsbl": {"sites": [{"zone": "zen"}]}}, "screening.dnsbl.sites[0].zone: 'zen' is not a valid domain"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "weight": "2"}]}}, "sites[0].weight: expected a number"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "weight": True}]}}, "sites[0].weight: expected a number"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "weight": 0}]}}, "sites[0].weight: must not be 0"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "code": ["127.0.0.2"]}]}}, "sites[0].code: unknown key"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "codes": "127.0.0.2"}]}}, "sites[0].codes: expected a list"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "codes": ["127.0.0.x"]}]}},
     "sites[0].codes[0]: '127.0.0.x': not a return code"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "codes": ["127.0.0.7-127.0.0.4"]}]}},
     "sites[0].codes[0]: '127.0.0.7-127.0.0.4': the range ends before it starts"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "codes": ["10.0.0.2"]}]}}, "are in 127.0.0.0/8 (RFC 5782 §2.1)"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "codes": ["127.0.0.1/8"]}]}}, "': not a return code"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "codes": ["127.255.255.254"]}]}},
     "127.255.255.0/24 holds error codes (query refused), never listings"),
    ({"dnsbl": {"sites": [{"zone": "a.test", "codes": ["127.0.0.2-127.255.255.255"]}]}}, "holds error codes"),
    ({"dnsbl": {"threshold": 0}}, "screening.dnsbl.threshold: must be above 0"),
    ({"dnsbl": {"threshold": "3"}}, "screening.dnsbl.threshold: expected a number"),
    ({"dnsbl": {"allow_threshold": 0}}, "screening.dnsbl.allow_threshold: must be below 0"),
    ({"dnsbl": {"timeout": "0s"}}, "screening.dnsbl.timeout: duration must be positive"),
    ({"dnsbl": {"ttl": "1 hour"}}, "screening.dnsbl.ttl: expected a duration"),
])
def test_mistakes_are_one_line_errors_naming_the_key(screening: Any, expected: str) -> None:
    assert expected in error(screening)


_listing = st.integers(int(A("127.0.0.0")), int(A("127.255.254.255"))).map(A)


@given(_listing, _listing)
def test_any_range_of_listing_codes_reads_back_as_written(first: ipaddress.IPv4Address,
                                                          last: ipaddress.IPv4Address) -> None:
    first, last = min(first, last), max(first, last)
    [site] = load({"dnsbl": {"sites": [{"zone": "a.test", "codes": [f"{first}-{last}", str(first)]}]}}).dnsbl.sites
    assert site.codes == ((first, last), (first, first))


def test_postfix_octet_patterns_stand_for_the_codes_they_name() -> None:
    [trusted, any_wl] = load({"dnsbl": {"sites": [
        {"zone": "list.dnswl.org", "weight": -3, "codes": ["127.0.[0..255].[2;3]"]},
        {"zone": "list.dnswl.org", "weight": -1, "codes": ["127.0.0.[2;4..7;5]"]}]}}).dnsbl.sites
    assert len(trusted.codes) == 256 and trusted.codes[0] == (A("127.0.0.2"), A("127.0.0.3"))
    assert trusted.codes[-1] == (A("127.0.255.2"), A("127.0.255.3"))
    assert any_wl.codes == ((A("127.0.0.2"), A("127.0.0.2")), (A("127.0.0.4"), A("127.0.0.7")))  # merged runs


@pytest.mark.parametrize(("code", "expected"), [
    ("127.0.[0..256].1", "octet '0..256' is not a number or range within 0..255"),
    ("127.0.[3..1].1", "octet '3..1' is not a number or range"),
    ("127.0.[0..255.1", "not a return code"),
    ("127.[0..255].[0..255].[0..255]", "more than 4096"),
    ("127.[0..255].255.255", "127.255.255.0/24 holds error codes"),
    ("[10;127].0.0.2", "are in 127.0.0.0/8"),
])
def test_a_wrong_pattern_is_a_one_line_error(code: str, expected: str) -> None:
    text = error({"dnsbl": {"sites": [{"zone": "a.test", "codes": [code]}]}})
    assert f"screening.dnsbl.sites[0].codes[0]: {code!r}: " in text and expected in text


_octet_sets = st.lists(st.tuples(st.integers(0, 254), st.integers(0, 254)).map(sorted), min_size=1, max_size=3)


@given(st.tuples(_octet_sets, _octet_sets))
def test_a_pattern_matches_exactly_the_addresses_whose_octets_it_names(octets: tuple[list, list]) -> None:
    third, fourth = octets

    def written(runs: list) -> str:
        return "[" + ";".join(f"{low}..{high}" for low, high in runs) + "]"

    [site] = load({"dnsbl": {"sites": [{"zone": "a.test", "codes": [
        f"127.0.{written(third)}.{written(fourth)}"]}]}}).dnsbl.sites
    covered = {a for first, last in site.codes for a in range(int(first), int(last) + 1)}
    expected = {(127 << 24) | (c << 8) | d for low, high in third for c in range(low, high + 1)
                for first, last in fourth for d in range(first, last + 1)}
    assert covered == expected
