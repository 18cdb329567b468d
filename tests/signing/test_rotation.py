"""A selector's life against a real BIND: rotation publishes the new records (RFC 2136, TSIG) or waits for the
administrator to add them, switches only once DNS serves them, keeps the old record until retire_at (an injected
clock), then withdraws it; the signer's view (KeyStore.signing_keys) never goes empty between."""

from __future__ import annotations

import asyncio
import base64
import calendar
import json
import os
import signal
import socket
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from peers.named import NamedServer, free_port, start_named
from waits import wait_until

from appliance.config.model import DKIMPublishConfig
from appliance.dns.resolver import DNSError, Resolver
from appliance.signing.keys import KeyStore, KeyStoreWriter, zone_line
from appliance.signing.rotation import DNSUpdatePublisher, Rotation, RotationError

DOMAIN = "example.test"
ADDRESS = "127.0.0.1"  # BIND listens only on addresses of an interface; lo holds 127.0.0.1 (free port)
TSIG = ("mf-update", "hmac-sha256", base64.b64encode(os.urandom(32)).decode())
WEEK = 7 * 86400.0
START = float(calendar.timegm((2026, 12, 3, 12, 0, 0)))


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def served(named: NamedServer, selector: str) -> list[str]:
    """The TXT records BIND itself answers for the selector now."""
    query = dns.message.make_query(f"{selector}._domainkey.{DOMAIN}.", "TXT")
    reply = dns.query.udp(query, named.address, port=named.port, timeout=3)
    return [b"".join(rr.strings).decode() for rrset in reply.answer for rr in rrset
            if rrset.rdtype == dns.rdatatype.TXT]


def states(store: KeyStoreWriter) -> dict[str, str]:
    return {r.selector: r.state for r in store.read(DOMAIN).records}


def signing(root: Path) -> set[str]:
    return {key.selector for key in KeyStore(root).signing_keys(DOMAIN)}


def fresh_lookup(named: NamedServer):  # noqa: ANN201 - the Lookup of rotation.py
    return lambda name: Resolver(named.nameservers, port=named.port, timeout=2).txt(name)


@pytest.fixture
def updatable(tmp_path: Path):
    server = start_named(tmp_path / "named", {DOMAIN: ""}, address=ADDRESS, update_key=TSIG)
    yield server
    server.stop()


def test_rotation_with_dns_updates_switches_then_withdraws_the_old_record(updatable: NamedServer,
                                                                           tmp_path: Path) -> None:
    clock = Clock()
    store = KeyStoreWriter(tmp_path / "dkim")
    publisher = DNSUpdatePublisher(DKIMPublishConfig(server=ADDRESS, port=updatable.port, key_name=TSIG[0],
                                                     key_secret=TSIG[2]))
    rotation = Rotation(store, fresh_lookup(updatable), WEEK, publisher, clock)

    first = rotation.new_selectors(DOMAIN)  # a domain without keys: the first ones
    assert [r.selector for r in first] == ["mf20261203r", "mf20261203e"]
    assert asyncio.run(rotation.check_domain(DOMAIN)) == [] and signing(store.root) == set()  # not in DNS yet
    rotation.publish(DOMAIN, first)
    assert served(updatable, "mf20261203r")[0].startswith("v=DKIM1; k=rsa; p=")
    changes = asyncio.run(rotation.check_domain(DOMAIN))
    assert [(c.selector, c.old, c.new) for c in changes] == [
        ("mf20261203r", "pending", "active"), ("mf20261203e", "pending", "active")]
    assert signing(store.root) == {"mf20261203r", "mf20261203e"}

    clock.now += 86400
    second = rotation.new_selectors(DOMAIN)
    assert [r.selector for r in second] == ["mf20261204r", "mf20261204e"]
    assert asyncio.run(rotation.check_domain(DOMAIN)) == []
    assert signing(store.root) == {"mf20261203r", "mf20261203e"}  # the old keys sign until the new are seen
    rotation.publish(DOMAIN, second)
    switched = clock.now
    changes = asyncio.run(rotation.check_domain(DOMAIN))
    assert sorted((c.selector, c.old, c.new) for c in changes) == [
        ("mf20261203e", "active", "retiring"), ("mf20261203r", "active", "retiring"),
        ("mf20261204e", "pending", "active"), ("mf20261204r", "pending", "active")]
    assert signing(store.root) == {"mf20261204r", "mf20261204e"}
    old = store.read(DOMAIN).get("mf20261203r")
    assert old is not None and old.retire_at == switched + WEEK

    clock.now = switched + WEEK - 1
    assert asyncio.run(rotation.check_domain(DOMAIN)) == []
    assert served(updatable, "mf20261203r") and served(updatable, "mf20261203e")  # still published

    clock.now = switched + WEEK
    changes = asyncio.run(rotation.check_domain(DOMAIN))
    assert sorted((c.selector, c.new) for c in changes) == [("mf20261203e", "retired"), ("mf20261203r", "retired")]
    assert served(updatable, "mf20261203r") == [] and served(updatable, "mf20261203e") == []
    assert served(updatable, "mf20261204r")
    assert not (store.root / DOMAIN / "mf20261203r.pem").exists()
    assert states(store) == {"mf20261203r": "retired", "mf20261203e": "retired",
                             "mf20261204r": "active", "mf20261204e": "active"}
    assert signing(store.root) == {"mf20261204r", "mf20261204e"}


def test_a_refused_update_is_a_clear_error(updatable: NamedServer, tmp_path: Path) -> None:
    wrong = DNSUpdatePublisher(DKIMPublishConfig(server=ADDRESS, port=updatable.port, key_name=TSIG[0],
                                                 key_secret=base64.b64encode(b"x" * 32).decode()))
    with pytest.raises(RotationError, match=rf"DNS update adding mf1._domainkey.{DOMAIN}. at {ADDRESS} port "):
        wrong.add(DOMAIN, "mf1", "v=DKIM1; k=ed25519; p=AAAA")
    assert served(updatable, "mf1") == []


def test_without_updates_a_selector_waits_for_the_zone_to_hold_it(tmp_path: Path) -> None:
    named = start_named(tmp_path / "named", {DOMAIN: ""}, address=ADDRESS)
    try:
        store = KeyStoreWriter(tmp_path / "dkim")
        rotation = Rotation(store, fresh_lookup(named), WEEK, None, Clock())
        new = rotation.new_selectors(DOMAIN)
        assert asyncio.run(rotation.check_domain(DOMAIN)) == []
        assert set(states(store).values()) == {"pending"}

        keys = store.read(DOMAIN)
        lines = "\n".join(zone_line(DOMAIN, r.selector, r.algorithm, keys.public(r.selector)) for r in new)
        zone = named.workdir / f"{DOMAIN}.zone"
        zone.write_text(zone.read_text().replace(" 1 3600 600", " 2 3600 600") + lines + "\n")
        named.process.send_signal(signal.SIGHUP)  # named reloads the changed zone file
        wait_until(lambda: served(named, new[1].selector), 15, "named to serve the new records", named.log)

        changes = asyncio.run(rotation.check_domain(DOMAIN))
        assert [(c.selector, c.new) for c in changes] == [(new[0].selector, "active"), (new[1].selector, "active")]
        assert signing(store.root) == {new[0].selector, new[1].selector}
    finally:
        named.stop()


def test_dns_down_leaves_the_keys_as_they_were(tmp_path: Path) -> None:
    store = KeyStoreWriter(tmp_path / "dkim")
    port = free_port([ADDRESS], (socket.SOCK_DGRAM, socket.SOCK_STREAM))  # nothing listens there
    down = lambda name: Resolver([ADDRESS], port=port, timeout=0.5).txt(name)  # noqa: E731
    rotation = Rotation(store, down, WEEK, None, Clock())
    rotation.new_selectors(DOMAIN)
    before = (store.root / DOMAIN / "keys.json").read_bytes()
    with pytest.raises(DNSError):
        asyncio.run(rotation.check_domain(DOMAIN))
    assert (store.root / DOMAIN / "keys.json").read_bytes() == before
    assert asyncio.run(rotation.check()) == []  # the periodic pass logs it and goes on
    assert json.loads(before)["keys"][0]["state"] == "pending"
