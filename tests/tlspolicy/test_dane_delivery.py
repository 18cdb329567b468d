"""DANE end to end: a DNSSEC-signed zone (dnssec-keygen, dnssec-signzone) served by BIND, a validating unbound
that trusts its key, real SMTP sinks with certificates; the Deliverer applies the TLSA records."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from peers.mta_sts import PolicyServer, start_policy_server
from peers.named import NamedServer, free_port
from peers.smtp_sink import Sink, start_sink
from peers.tls import new_ca, self_signed_cert
from peers.unbound import UnboundServer, start_signed_zone, start_unbound

from appliance.config.model import DeliveryConfig, HostPort, OutboundTLSConfig
from appliance.delivery.client import Deliverer, MXTarget
from appliance.tlspolicy.policy import TLSPolicy

from .recorder import Recorded

ZONE = "dane.test"
MX = {"ee": "127.0.46.31", "ta": "127.0.46.32", "wrong": "127.0.46.33", "bogus": "127.0.46.34",
      "unusable": "127.0.46.35"}
POLICY_IP = "127.0.46.36"  # the MTA-STS policy server of ee.dane.test, whose policy names no MX of it
BOGUS = "0123456789ABCDEF" * 4  # the TLSA data whose signature the zone's tampering breaks


@dataclass
class World:
    named: NamedServer
    unbound: UnboundServer
    sinks: dict[str, Sink]
    port: int
    ca_file: Path
    policies: PolicyServer


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dane")
    port = free_port(list(MX.values()))
    ca = new_ca(tmp / "ca")
    certs = {name: self_signed_cert(tmp / name, f"not-the-mx-name-{name}.test") for name in ("ee", "wrong", "bogus",
                                                                                              "unusable")}
    certs["ta"] = ca.issue(tmp / "ta", f"mx-ta.{ZONE}", include_ca=True)
    ca_sha256 = hashlib.sha256(ca.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    tlsa = {
        "ee": f"3 1 1 {_spki_sha256(_cert(certs['ee'].cert))}",
        "ta": f"2 0 1 {ca_sha256}",
        "wrong": f"3 1 1 {'00' * 32}",
        "bogus": f"3 1 1 {BOGUS}",
        "unusable": f"1 1 1 {_spki_sha256(_cert(certs['unusable'].cert))}",  # PKIX-EE: unusable for SMTP
    }
    records = "".join(f"{name} IN MX 10 mx-{name}\nmx-{name} IN A {address}\n"
                      f"_{port}._tcp.mx-{name} IN TLSA {tlsa[name]}\n" for name, address in MX.items())
    records += f'_mta-sts.ee IN TXT "v=STSv1; id=1"\nmta-sts.ee IN A {POLICY_IP}\n'
    policies = start_policy_server(POLICY_IP, ca.issue(tmp / "https", f"mta-sts.ee.{ZONE}").server_context(),
                                   {f"mta-sts.ee.{ZONE}": "version: STSv1\nmode: enforce\nmx: elsewhere.test\n"
                                                          "max_age: 600\n"})
    named, anchor = start_signed_zone(tmp / "named", ZONE, records, "127.0.0.1",
                                      tamper=lambda text: text.replace(BOGUS[:16], "FEDCBA9876543210", 1))
    unbound = start_unbound(tmp / "unbound", "127.0.46.2", ZONE, named, anchor)
    sinks = {name: start_sink(MX[name], port, tls_context=certs[name].server_context()) for name in MX}
    yield World(named, unbound, sinks, port, ca.cert, policies)
    policies.stop()
    for sink in sinks.values():
        sink.stop()
    unbound.stop()
    named.stop()


async def _send(world: World, tmp_path: Path, name: str, mta_sts: bool = False) -> tuple[str, Recorded]:
    recorded = Recorded()
    settings = OutboundTLSConfig(mta_sts=mta_sts, dane=True, ca_file=world.ca_file,
                                 resolver=(HostPort(world.unbound.address, world.unbound.port),))
    policy = TLSPolicy(settings, tmp_path, world.named.nameservers, world.named.port, recorded,
                       https_port=world.policies.port)
    deliverer = Deliverer("client.test", world.named.resolver(),
                          DeliveryConfig(source_addresses=("127.0.46.1",), connection_reuse_time=0),
                          tls_policies=policy)
    domain = f"{name}.{ZONE}"
    results = await deliverer.deliver(MXTarget(domain, world.port), "a@client.test", [f"b@{domain}"],
                                      b"Subject: t\r\n\r\nhello\r\n")
    policy.close()
    return str(results[f"b@{domain}"]), recorded


async def test_dane_ee_matches_the_leaf_whatever_its_name(world: World, tmp_path: Path) -> None:
    result, recorded = await _send(world, tmp_path, "ee")
    assert result.startswith("250"), result
    assert world.sinks["ee"].messages[-1].tls is True
    assert [p.policy_type for p in recorded.successes] == ["tlsa"] and not recorded.failures


async def test_dane_takes_precedence_over_mta_sts(world: World, tmp_path: Path) -> None:
    """RFC 8461 §2: ee.dane.test's MTA-STS policy names no MX of it, but its MX has usable TLSA: DANE applies."""
    fetches = len(world.policies.fetches)
    result, recorded = await _send(world, tmp_path, "ee", mta_sts=True)
    assert result.startswith("250"), result
    assert [p.policy_type for p in recorded.successes] == ["tlsa"] and not recorded.failures
    assert len(world.policies.fetches) == fetches  # the policy was not even needed


async def test_without_dane_the_same_domain_gets_its_mta_sts_policy(world: World, tmp_path: Path) -> None:
    recorded = Recorded()
    settings = OutboundTLSConfig(mta_sts=True, ca_file=world.ca_file)
    policy = TLSPolicy(settings, tmp_path, world.named.nameservers, world.named.port, recorded,
                       https_port=world.policies.port)
    deliverer = Deliverer("client.test", world.named.resolver(),
                          DeliveryConfig(source_addresses=("127.0.46.1",)), tls_policies=policy)
    results = await deliverer.deliver(MXTarget(f"ee.{ZONE}", world.port), "a@client.test", [f"b@ee.{ZONE}"],
                                      b"Subject: t\r\n\r\nhello\r\n")
    policy.close()
    assert str(results[f"b@ee.{ZONE}"]).startswith("451 4.7.5")  # enforce: its one MX is not in the policy


async def test_dane_ta_matches_the_ca_the_server_sends_and_checks_the_name(world: World, tmp_path: Path) -> None:
    result, recorded = await _send(world, tmp_path, "ta")
    assert result.startswith("250"), result
    assert world.sinks["ta"].messages[-1].tls is True
    assert recorded.successes and not recorded.failures


async def test_a_tlsa_record_that_does_not_match_defers_without_plaintext(world: World, tmp_path: Path) -> None:
    result, recorded = await _send(world, tmp_path, "wrong")
    assert result.startswith("451 4.7.5") and "validation-failure" in result, result
    assert world.sinks["wrong"].messages == []
    assert recorded.failure_types() == ["validation-failure"]


async def test_a_tlsa_lookup_that_fails_validation_defers(world: World, tmp_path: Path) -> None:
    """RFC 7672 §2.2: a bogus TLSA answer (SERVFAIL from the validator) is a failure, not a reason for plaintext."""
    result, recorded = await _send(world, tmp_path, "bogus")
    assert result.startswith("451 4.7.5") and "dnssec-invalid" in result, result
    assert world.sinks["bogus"].handler.sessions == 0  # not even connected to
    assert recorded.failure_types() == ["dnssec-invalid"]


async def test_only_unusable_records_leave_tls_opportunistic(world: World, tmp_path: Path) -> None:
    """RFC 7672 §3.1.3: PKIX-TA/PKIX-EE are unusable; with nothing usable DANE does not apply."""
    result, recorded = await _send(world, tmp_path, "unusable")
    assert result.startswith("250"), result
    assert not recorded.successes and not recorded.failures
