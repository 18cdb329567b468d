"""The outgoing gateway's world: real MX sinks on port 25 that refuse some of our sending addresses, a real BIND
that answers the MX records and forwards the DNSBL zone to a real rbldnsd, and the gateway's config."""

from __future__ import annotations

import os
import random
import smtplib
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope, Session
from peers.named import NamedServer, start_named
from peers.rbldnsd import RbldnsdServer, start_rbldnsd
from peers.smtp_sink import Sink, SinkHandler, _SinkController
from waits import wait_until

EGRESS1, EGRESS2 = "127.0.44.1", "127.0.44.2"
ZONE = "zen.test"
DESTINATIONS = ("dest1.test", "dest2.test", "dest3.test")
RELAY_CLIENT = "127.0.0.1"
MESSAGE = b"From: sender@home.test\r\nSubject: out\r\n\r\nHello.\r\n"


@dataclass
class RefusingHandler(SinkHandler):
    """An MX that refuses, at RCPT, connections from the addresses it has on its own block list."""

    blocked: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server, session: Session, envelope: Envelope, address: str, rcpt_options) -> str:
        peer = session.peer[0]
        if peer in self.blocked:
            self.rcpts.append(address)
            return f"554 5.7.1 Service unavailable; Client host [{peer}] blocked using {ZONE}"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def start_refusing_sink(address: str, port: int) -> Sink:
    handler = RefusingHandler()
    controller = _SinkController(handler, hostname=address, port=port, enable_SMTPUTF8=True, decode_data=False,
                                 ident="mx.test ESMTP")
    controller.start()
    return Sink(address, port, handler, controller)


def _free_mx_address() -> str:
    """An address of our range where nothing holds port 25 (delivery by MX always goes to port 25)."""
    for _ in range(50):
        address = f"127.0.44.{random.randint(100, 250)}"
        try:
            with socket.socket() as probe:
                probe.bind((address, 25))
        except OSError:
            continue
        return address
    raise RuntimeError("no address of 127.0.44.0/24 with port 25 free")


def write_zone(rbl: RbldnsdServer, entries: Mapping[str, str]) -> None:
    """rbldnsd's zone with a TTL of 1s (BIND caches the answers it forwards), then wait until it is served."""
    path = rbl.root / f"{ZONE}.ip4set"
    lines = ["$TTL 1"] + [f"{ip} :{code}:listed by the test" for ip, code in entries.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    rbl._stamp += 2
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + rbl._stamp))
    for ip, code in entries.items():
        wait_until(lambda ip=ip, code=code: rbl.answer(ip, ZONE) == (code,), 15, f"rbldnsd to list {ip}",
                   detail=rbl.log)
    for ip in {EGRESS1, EGRESS2} - set(entries):
        wait_until(lambda ip=ip: rbl.answer(ip, ZONE) == (), 15, f"rbldnsd to delist {ip}", detail=rbl.log)


@dataclass
class World:
    named: NamedServer
    rbl: RbldnsdServer
    mx: Sink

    @property
    def handler(self) -> RefusingHandler:
        assert isinstance(self.mx.handler, RefusingHandler)
        return self.mx.handler

    def gateway(self, failover: dict | None = None, **more: object) -> dict:
        """An outgoing gateway with two sending addresses, each with its own HELO name."""
        config: dict = {
            "roles": ["outgoing_gateway"],
            "dns": {"nameservers": [self.named.address], "port": self.named.port, "timeout": "2s"},
            "queue": {"retry_schedule": ["1s"]},
            "delivery": {"connect_timeout": "2s", "connection_reuse_time": "0s"},
            "outgoing_gateway": {
                "relay_networks": [f"{RELAY_CLIENT}/32"],
                "egress": [{"address": EGRESS1, "helo": "out1.test"}, {"address": EGRESS2, "helo": "out2.test"}],
                "failover": {"dnsbl": [ZONE], "check_interval": "0.5s", "clear_for": "1s", **(failover or {})},
            },
        }
        config.update(more)
        return config


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    rbl = start_rbldnsd(tmp_path / "rbldnsd", {ZONE: {}}, address="127.0.0.1")
    write_zone(rbl, {})
    mx_address = _free_mx_address()
    zones = {d: f"@ IN MX 10 mx\nmx IN A {mx_address}\n" for d in (*DESTINATIONS, "home.test")}
    try:
        named = start_named(tmp_path / "named", zones, address="127.0.0.1", forwards={ZONE: (rbl.address, rbl.port)})
    except BaseException:
        rbl.stop()
        raise
    mx = start_refusing_sink(mx_address, 25)
    yield World(named, rbl, mx)
    mx.stop()
    named.stop()
    rbl.stop()


def send(server, rcpt: str, mail_from: str = "sender@home.test") -> None:
    """Relay one message through the gateway from its relay network."""
    with smtplib.SMTP(RELAY_CLIENT, server.smtp_port, timeout=30) as conn:
        conn.sendmail(mail_from, [rcpt], MESSAGE)
