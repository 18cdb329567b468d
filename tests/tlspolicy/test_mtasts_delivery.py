"""MTA-STS end to end: BIND publishes the TXT records, a real HTTPS server the policies (test CA), real SMTP
sinks with certificates for their MX name or another name; the Deliverer applies the policy."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers.mta_sts import PolicyServer, start_policy_server
from peers.named import NamedServer, free_port, start_named
from peers.smtp_sink import Sink, start_sink
from peers.tls import CertificateAuthority, CertPair, new_ca

from appliance.config.model import DeliveryConfig, OutboundTLSConfig
from appliance.delivery.client import Deliverer, MXTarget
from appliance.tlspolicy.policy import TLSPolicy

from .recorder import Recorded

POLICY_IP = "127.0.46.20"
MX = {"good": "127.0.46.11", "wrong": "127.0.46.12", "testing": "127.0.46.13", "plain": "127.0.46.14",
      "none": "127.0.46.15", "other": "127.0.46.16"}
DOMAINS = ("good", "wrong", "testing", "plain", "outside", "cached", "testplain")


def _policy(mode: str, mx: str) -> str:
    return f"version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n"


@dataclass
class World:
    named: NamedServer
    ca: CertificateAuthority
    policies: PolicyServer
    https_cert: CertPair
    sinks: dict[str, Sink]
    port: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mtasts")
    ca = new_ca(tmp / "ca")
    zones = {}
    for name in DOMAINS:
        host = {"cached": "none", "outside": "other", "testplain": "plain"}.get(name, name)
        zones[f"{name}.test"] = (f"@ IN MX 10 mx\nmx IN A {MX[host]}\nmta-sts IN A {POLICY_IP}\n"
                                 f'_mta-sts IN TXT "v=STSv1; id=1"\n')
    zones["none.test"] = f"@ IN MX 10 mx\nmx IN A {MX['none']}\n"
    named = start_named(tmp / "named", zones, "127.0.0.1")
    policy_cert = ca.issue(tmp / "https", f"mta-sts.{DOMAINS[0]}.test",
                           alt_names=tuple(f"mta-sts.{d}.test" for d in DOMAINS[1:]))
    policies = start_policy_server(POLICY_IP, policy_cert.server_context(), {
        "mta-sts.good.test": _policy("enforce", "mx.good.test"),
        "mta-sts.wrong.test": _policy("enforce", "*.wrong.test"),
        "mta-sts.testing.test": _policy("testing", "mx.testing.test"),
        "mta-sts.plain.test": _policy("enforce", "mx.plain.test"),
        "mta-sts.outside.test": _policy("enforce", "mx.elsewhere.test"),
        "mta-sts.cached.test": _policy("enforce", "mx.cached.test"),
        "mta-sts.testplain.test": _policy("testing", "mx.testplain.test"),
    })
    port = free_port(list(MX.values()))
    sinks = {}
    for name, address in MX.items():
        cert_name = {"wrong": "someone-else.test", "testing": "someone-else.test"}.get(name, f"mx.{name}.test")
        context = None if name == "plain" else ca.issue(tmp / name, cert_name).server_context()
        sinks[name] = start_sink(address, port, tls_context=context)
    yield World(named, ca, policies, policy_cert, sinks, port)
    for sink in sinks.values():
        sink.stop()
    policies.stop()
    named.stop()


def _policy_for(world: World, data_dir: Path, recorded: Recorded) -> TLSPolicy:
    settings = OutboundTLSConfig(mta_sts=True, ca_file=world.ca.cert, fetch_timeout=5.0)
    return TLSPolicy(settings, data_dir, world.named.nameservers, world.named.port, recorded,
                     https_port=world.policies.port)


def _deliverer(world: World, policy: TLSPolicy) -> Deliverer:
    settings = DeliveryConfig(source_addresses=("127.0.46.1",), connection_reuse_time=0)
    return Deliverer("client.test", world.named.resolver(), settings, tls_policies=policy)


async def _send(world: World, policy: TLSPolicy, domain: str) -> str:
    results = await _deliverer(world, policy).deliver(MXTarget(domain, world.port), "a@client.test",
                                                      [f"b@{domain}"], b"Subject: t\r\n\r\nhello\r\n")
    return str(results[f"b@{domain}"])


async def test_enforce_with_a_valid_certificate_delivers_over_verified_tls(world: World, tmp_path: Path) -> None:
    recorded = Recorded()
    result = await _send(world, _policy_for(world, tmp_path, recorded), "good.test")
    assert result.startswith("250"), result
    assert world.sinks["good"].messages[-1].tls is True
    assert [p.policy_type for p in recorded.successes] == ["sts"] and not recorded.failures
    assert recorded.successes[0].mx_host == ("mx.good.test",)


async def test_enforce_with_a_certificate_for_another_name_defers(world: World, tmp_path: Path) -> None:
    recorded = Recorded()
    before = len(world.sinks["wrong"].messages)
    result = await _send(world, _policy_for(world, tmp_path, recorded), "wrong.test")
    assert result.startswith("451 4.7.5") and "certificate-host-mismatch" in result, result
    assert len(world.sinks["wrong"].messages) == before  # neither over TLS nor in plaintext
    assert recorded.failure_types() == ["certificate-host-mismatch"]
    assert recorded.failures[0][1].receiving_mx_hostname == "mx.wrong.test"


async def test_a_tls_report_reaches_a_domain_whose_policy_fails_and_is_not_reported(world: World,
                                                                                   tmp_path: Path) -> None:
    # RFC 8460 §3: a report is delivered despite the TLS failures it may be reporting, and its session is not
    # counted in the next report; the same message as ordinary mail is deferred (the test above).
    recorded = Recorded()
    before = len(world.sinks["wrong"].messages)
    results = await _deliverer(world, _policy_for(world, tmp_path, recorded)).deliver(
        MXTarget("wrong.test", world.port), "tlsrpt@client.test", ["b@wrong.test"],
        b"Subject: Report Domain: wrong.test\r\n\r\nreport\r\n", tls_report=True)
    assert str(results["b@wrong.test"]).startswith("250"), results
    assert len(world.sinks["wrong"].messages) == before + 1
    assert world.sinks["wrong"].messages[-1].tls is True  # opportunistic TLS, unverified, still TLS
    assert not recorded.failures and not recorded.successes


async def test_testing_mode_delivers_anyway_and_reports_the_failure(world: World, tmp_path: Path) -> None:
    recorded = Recorded()
    result = await _send(world, _policy_for(world, tmp_path, recorded), "testing.test")
    assert result.startswith("250"), result
    assert world.sinks["testing"].messages[-1].tls is True
    assert recorded.failure_types() == ["certificate-host-mismatch"]


async def test_enforce_without_starttls_defers_instead_of_plaintext(world: World, tmp_path: Path) -> None:
    recorded = Recorded()
    result = await _send(world, _policy_for(world, tmp_path, recorded), "plain.test")
    assert result.startswith("451 4.7.5"), result
    assert world.sinks["plain"].messages == []
    assert recorded.failure_types() == ["starttls-not-supported"]


async def test_testing_mode_without_starttls_delivers_in_plaintext_and_reports(world: World, tmp_path: Path) -> None:
    recorded = Recorded()
    result = await _send(world, _policy_for(world, tmp_path, recorded), "testplain.test")
    assert result.startswith("250"), result
    assert [m.tls for m in world.sinks["plain"].messages if "b@testplain.test" in m.rcpt_tos] == [False]
    assert recorded.failure_types() == ["starttls-not-supported"]


async def test_an_mx_the_policy_does_not_name_is_not_used(world: World, tmp_path: Path) -> None:
    result = await _send(world, _policy_for(world, tmp_path, Recorded()), "outside.test")
    assert result.startswith("451 4.7.5") and "MTA-STS" in result, result
    assert world.sinks["other"].messages == []


async def test_a_domain_without_a_policy_stays_opportunistic(world: World, tmp_path: Path) -> None:
    recorded = Recorded()
    result = await _send(world, _policy_for(world, tmp_path, recorded), "none.test")
    assert result.startswith("250"), result
    assert not recorded.successes and not recorded.failures


async def test_the_cached_policy_is_enforced_after_a_restart_with_the_server_down(
        world: World, tmp_path: Path) -> None:
    """§5.1: the policy is cached under data_dir; a refresh that fails (new id in DNS, policy server down)
    keeps the cached policy in force."""
    server = start_policy_server(POLICY_IP, world.https_cert.server_context(),
                                 {"mta-sts.cached.test": _policy("enforce", "mx.cached.test")})
    first = TLSPolicy(OutboundTLSConfig(ca_file=world.ca.cert), tmp_path, world.named.nameservers,
                      world.named.port, Recorded(), https_port=server.port)
    result = await _send(world, first, "cached.test")
    assert result.startswith("451 4.7.5") and "certificate-host-mismatch" in result, result  # its cert: mx.none
    assert server.fetches == ["mta-sts.cached.test"]
    first.close()
    server.stop()
    renewed = start_named(tmp_path / "named", {"cached.test": (
        f'@ IN MX 10 mx\nmx IN A {MX["none"]}\nmta-sts IN A {POLICY_IP}\n_mta-sts IN TXT "v=STSv1; id=2"\n')},
        "127.0.0.1")
    try:
        recorded = Recorded()
        again = TLSPolicy(OutboundTLSConfig(ca_file=world.ca.cert), tmp_path, renewed.nameservers, renewed.port,
                          recorded, https_port=server.port)
        result = await _send(world, again, "cached.test")
        again.close()
    finally:
        renewed.stop()
    assert result.startswith("451 4.7.5") and "certificate-host-mismatch" in result, result
    assert recorded.failure_types() == ["certificate-host-mismatch"]
    assert not any("b@cached.test" in m.rcpt_tos for m in world.sinks["none"].messages)


async def test_a_policy_that_cannot_be_fetched_is_reported_and_mail_flows(world: World, tmp_path: Path) -> None:
    """§5: without a valid policy the domain is treated as having none; TLS-RPT hears of the fetch error."""
    recorded = Recorded()
    world.policies.content_type = "text/html"
    try:
        result = await _send(world, _policy_for(world, tmp_path, recorded), "good.test")
    finally:
        world.policies.content_type = "text/plain"
    assert result.startswith("250"), result
    assert recorded.failure_types() == ["sts-policy-invalid"]


def test_sockets_are_on_loopback() -> None:
    assert all(socket.inet_aton(a)[0] == 127 for a in (*MX.values(), POLICY_IP)) and ssl.HAS_SNI
