"""DNSBL/DNSWL scoring and the screening caches: the pure parts with hypothesis, the check against a real
rbldnsd in this process (where the verdicts it leaves can be read), the cache with a clock the test moves."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
from hypothesis import given
from hypothesis import strategies as st
from peers.tls import self_signed_cert

from appliance.config.model import DNSBLConfig, DNSBLSite, DNSConfig, PregreetConfig, ScreeningConfig
from appliance.dns.dnsbl import query_name
from appliance.pipeline.intake import Intake
from appliance.pipeline.stages import Pipeline, Result, Stage, accept
from appliance.pipeline.verdicts import DNSBL_SCORE, DNSWL, PREGREET
from appliance.screening.cache import ScreeningCache
from appliance.screening.check import Screening
from appliance.screening.dnsbl import ZoneAnswer, score
from appliance.screening.lookup import DNSBLLookup
from appliance.screening.pregreet import PregreetTest
from appliance.smtp.protocol import SMTPServerProtocol
from appliance.smtp.server import InboundHandler, ListenerOptions, SessionCounter

pytest_plugins = ["peers.rbldnsd"]

BL, WL = "bl.screen.test", "wl.screen.test"
A = ipaddress.IPv4Address


@dataclass
class _Client:
    ip: str
    host_name: str | None = None
    login: str | None = None
    verdicts: dict[str, object] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------- pure parts


@given(st.ip_addresses(v=4))
def test_an_ipv4_query_name_is_the_reversed_octets_under_the_zone(ip: ipaddress.IPv4Address) -> None:
    name = query_name(str(ip), "bl.example.org.")
    labels = name.split(".")
    assert labels[4:] == ["bl", "example", "org"]  # RFC 5782 §2.1
    assert ".".join(reversed(labels[:4])) == str(ip)
    assert query_name(f"::ffff:{ip}", "bl.example.org") == name  # an IPv4-mapped client is the IPv4 client


@given(st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None))
def test_an_ipv6_query_name_is_the_reversed_nibbles(ip: ipaddress.IPv6Address) -> None:
    name = query_name(str(ip), "bl.example.org")
    nibbles = name.split(".")[:32]  # RFC 5782 §2.4
    assert all(len(n) == 1 for n in nibbles) and name.endswith(".bl.example.org")
    assert ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)) == ip


_codes = st.integers(min_value=int(A("127.0.0.0")), max_value=int(A("127.255.254.255"))).map(A)
_errors = st.one_of(st.integers(0, 255).map(lambda n: f"127.255.255.{n}"),
                    st.ip_addresses(v=4).filter(lambda ip: ip not in ipaddress.IPv4Network("127.0.0.0/8")).map(str),
                    st.just("not-an-address"))
_sites = st.lists(st.builds(
    DNSBLSite, zone=st.sampled_from([BL, WL, "other.test"]),
    weight=st.integers(-3, 3).filter(bool).map(float),
    codes=st.lists(st.tuples(_codes, _codes).map(sorted).map(tuple), max_size=2).map(tuple)), max_size=5)


@given(_sites, st.dictionaries(st.sampled_from([BL, WL, "other.test"]), st.lists(_errors, max_size=3)))
def test_error_answers_never_count(sites: list[DNSBLSite], answers: dict[str, list[str]]) -> None:
    found = score(sites, {zone: ZoneAnswer(zone, tuple(texts)) for zone, texts in answers.items()})
    assert found.total == 0 and not found.blocked_by and not found.allowed_by
    assert {answer.zone for answer in found.errors} == {zone for zone, texts in answers.items() if texts}


@given(_sites, st.dictionaries(st.sampled_from([BL, WL, "other.test"]), st.lists(_codes, max_size=3)))
def test_the_score_adds_the_weight_of_every_site_with_a_matching_code(
        sites: list[DNSBLSite], answers: dict[str, list[ipaddress.IPv4Address]]) -> None:
    found = score(sites, {zone: ZoneAnswer(zone, tuple(map(str, codes))) for zone, codes in answers.items()})
    expected = sum(site.weight for site in sites
                   if any(not site.codes or any(lo <= code <= hi for lo, hi in site.codes)
                          for code in answers.get(site.zone, ())))
    assert found.total == expected and not found.errors
    assert set(found.blocked_by) <= {site.zone for site in sites if site.weight > 0}


def test_a_zone_listed_twice_counts_each_entry_whose_codes_match() -> None:
    sites = [DNSBLSite(WL, -1, ((A("127.0.0.0"), A("127.0.0.255")),)), DNSBLSite(WL, -2, ((A("127.0.0.3"),) * 2,))]
    assert score(sites, {WL: ZoneAnswer(WL, ("127.0.0.3",))}).total == -3
    assert score(sites, {WL: ZoneAnswer(WL, ("127.0.0.2",))}).total == -1
    assert score(sites, {WL: ZoneAnswer(WL, ("127.0.1.3",))}).total == 0


# ---------------------------------------------------------------------------------------------- the check


def _screening(rbl, tmp_path: Path, clock: _Clock, pregreet: bool = False) -> tuple[Screening, ScreeningCache]:
    settings = ScreeningConfig(
        pregreet=PregreetConfig(enabled=pregreet, wait=1.0),
        dnsbl=DNSBLConfig(sites=(DNSBLSite(BL, 2.0), DNSBLSite(WL, -1.0),
                                 DNSBLSite(WL, -1.0, ((A("127.0.0.3"),) * 2,))),
                          threshold=2.0, allow_threshold=-1.0, timeout=1.0, ttl=3600.0))
    cache = ScreeningCache(tmp_path / "screening.sqlite", 86400.0, 3600.0, clock=clock)
    lookup = DNSBLLookup(DNSConfig(nameservers=(rbl.address,), port=rbl.port), timeout=1.0)
    return Screening(settings, cache, lookup), cache


def _connect(check: Screening, client: _Client, listener: str = "smtp") -> tuple[Result | None, bool]:
    """The CONNECT stage as the SMTP handler runs it: (the result that ended it, or None when the stage went
    on; whether it had to wait for DNS)."""
    pipeline = Pipeline()
    pipeline.register(Stage.CONNECT, check)
    outcome = pipeline.run(Stage.CONNECT, client, None, listener)
    if outcome is None or isinstance(outcome, Result):
        return outcome, False
    return asyncio.run(outcome), True  # type: ignore[arg-type]


def test_a_dnswl_listed_client_gets_the_verdict_and_no_pregreet_test(rbldnsd_factory, tmp_path: Path) -> None:
    rbl = rbldnsd_factory({BL: {"127.0.33.40": "127.0.0.2"}, WL: {"127.0.33.41": "127.0.0.3"}})
    check, _ = _screening(rbl, tmp_path, _Clock(), pregreet=True)

    allowed = _Client("127.0.33.41")
    result, waited = _connect(check, allowed)
    assert waited and result is None  # a note: the stage goes on
    assert allowed.verdicts[DNSWL] == (WL,) and allowed.verdicts[DNSBL_SCORE] == -2.0  # both WL entries match
    assert isinstance(allowed.verdicts[PREGREET], PregreetTest) and allowed.verdicts[PREGREET].skipped()

    again = _Client("127.0.33.41")  # the answer is cached now: allow-listed before any test is set up
    result, waited = _connect(check, again)
    assert not waited and again.verdicts[DNSWL] == (WL,) and PREGREET not in again.verdicts

    clean = _Client("127.0.33.42")
    result, _ = _connect(check, clean)
    assert clean.verdicts[DNSWL] == () and clean.verdicts[DNSBL_SCORE] == 0.0
    assert not clean.verdicts[PREGREET].skipped()  # type: ignore[attr-defined]

    listed = _Client("127.0.33.40")
    result, _ = _connect(check, listed)
    assert result is not None and result.refused and result.reply is not None
    assert result.reply.startswith("554 5.7.1") and BL in result.reply

    submission = _Client("127.0.33.40")
    assert _connect(check, submission, "submission") == (None, False)  # only the MX listener is screened
    assert submission.verdicts == {}


def test_answers_are_cached_for_the_ttl_and_a_lookup_that_fails_counts_nothing(
        rbldnsd_factory, tmp_path: Path) -> None:
    rbl = rbldnsd_factory({BL: {"127.0.33.43": "127.0.0.2"}, WL: {}})
    clock = _Clock()
    check, _ = _screening(rbl, tmp_path, clock)
    result, waited = _connect(check, _Client("127.0.33.43"))
    assert waited and result is not None and result.refused

    rbl.stop()
    clock.now += 3599
    result, waited = _connect(check, _Client("127.0.33.43"))  # from the cache: no DNS asked
    assert not waited and result is not None and result.refused

    clock.now += 2  # past the ttl: asked again, and the nameserver is gone
    client = _Client("127.0.33.43")
    result, waited = _connect(check, client)
    assert waited and result is None  # fail open
    assert client.verdicts[DNSBL_SCORE] == 0.0


def test_a_pregreet_pass_is_shared_by_processes_and_a_failure_forgets_it(tmp_path: Path) -> None:
    clock = _Clock()
    first = ScreeningCache(tmp_path / "screening.sqlite", 86400.0, 3600.0, clock=clock)
    second = ScreeningCache(tmp_path / "screening.sqlite", 86400.0, 3600.0, clock=clock)  # another acceptor
    client = _Client("127.0.33.44")
    assert PregreetTest("127.0.33.44", client, 1.0, first).done(b"") is None
    assert second.pregreet_passed("127.0.33.44")
    clock.now += 86401
    assert not second.pregreet_passed("127.0.33.44")

    clock.now += 1
    first.pregreet_record("127.0.33.44", passed=True)
    refusal = PregreetTest("127.0.33.44", client, 1.0, second).done(b"EHLO x\r\n\x1b[2K")
    assert refusal is not None and refusal.startswith("554 5.7.1")
    assert not first.pregreet_passed("127.0.33.44")
    first.close()
    second.close()


def test_an_unusable_cache_file_tests_every_client_afresh(tmp_path: Path) -> None:
    (tmp_path / "screening.sqlite").mkdir()  # not a database
    cache = ScreeningCache(tmp_path / "screening.sqlite", 86400.0, 3600.0)
    cache.pregreet_record("127.0.33.45", passed=True)
    assert not cache.pregreet_passed("127.0.33.45")
    assert cache.dnsbl_answers("127.0.33.45", [BL]) == {}


async def test_the_dnswl_verdict_outlives_starttls(rbldnsd_factory, tmp_path: Path) -> None:
    """RFC 3207 §4.2 discards what the client said before STARTTLS, not what the CONNECT checks found out by
    themselves: a later check (greylisting) still sees the DNSWL listing inside TLS."""
    rbl = rbldnsd_factory({BL: {}, WL: {"127.0.33.46": "127.0.0.2"}})
    check, cache = _screening(rbl, tmp_path, _Clock())
    pipeline = Pipeline()
    pipeline.register(Stage.CONNECT, check)
    pipeline.register(Stage.MAIL, lambda client, transaction, sender: accept(
        f"250 2.1.0 dnswl={','.join(client.verdicts.get(DNSWL, ())) or '-'}"))
    handler = InboundHandler("mx.test", pipeline, Intake(_Nowhere()).commit, ListenerOptions("smtp"), None)
    tls = self_signed_cert(tmp_path, "mx.test").server_context()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTPServerProtocol(handler, SessionCounter(10), hostname="mx.test", data_size_limit=10_000,
                                   tls_context=tls, require_starttls=False), "127.0.0.1", 0)
    try:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.sockets[0].getsockname()[1], timeout=10,
                               source_address=("127.0.33.46", 0), start_tls=False, validate_certs=False)
        await smtp.connect()
        await smtp.starttls()
        reply = await smtp.mail("friend@far.test")
        assert reply.message == f"2.1.0 dnswl={WL}"
        await smtp.quit()
    finally:
        server.close()
        await server.wait_closed()
        cache.close()


class _Nowhere:
    """A delivery target for a test that sends no message."""

    def start(self, message: object) -> object:
        raise AssertionError("no message is sent in this test")
