"""A real BIND9 `named` on a loopback address and free port, serving zones the test writes.

Use as a pytest plugin (`pytest_plugins = ["peers.named"]`) for the `named_factory` fixture, or call
`start_named()` directly (benchmarks, demos).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from waits import WaitTimeout, wait_until

from appliance.dns.resolver import Resolver

from .process import stop_process

NAMED = "/usr/sbin/named"
NAMED_CHECKCONF = "/usr/bin/named-checkconf"


def free_port(addresses: list[str], kinds: tuple[int, ...] = (socket.SOCK_STREAM,)) -> int:
    """A port free on every address (and socket kind) given, so several peers can share it."""
    for _ in range(200):
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses:
                fam = socket.AF_INET6 if ":" in address else socket.AF_INET
                for kind in kinds:
                    with socket.socket(fam, kind) as s:
                        s.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no common free port on {addresses}")


@dataclass
class NamedServer:
    address: str
    port: int
    workdir: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def nameservers(self) -> list[str]:
        return [self.address]

    def resolver(self, timeout: float = 3.0, prefer_ipv6: bool | None = False) -> Resolver:
        """An appliance Resolver pointed at this server."""
        return Resolver(self.nameservers, port=self.port, timeout=timeout, prefer_ipv6=prefer_ipv6)

    def log(self) -> str:
        return (self.workdir / "named.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def _zone_text(origin: str, records: str, address: str) -> str:
    return (
        "$TTL 60\n"
        f"$ORIGIN {origin}.\n"
        f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n"
        f"@ IN NS ns.{origin}.\n"
        f"ns.{origin}. IN A {address}\n" + records + "\n"
    )


def _config(workdir: Path, address: str, port: int, zones: Mapping[str, str],
            forwards: Mapping[str, tuple[str, int]], update_key: tuple[str, str, str] | None = None) -> str:
    keys, update = "", ""
    if update_key is not None:  # (name, algorithm, base64 secret): RFC 2136 updates signed with this TSIG key
        name, algorithm, secret = update_key
        keys = f'key "{name}" {{ algorithm {algorithm}; secret "{secret}"; }};\n'
        update = f' allow-update {{ key "{name}"; }};'
    zone_blocks = keys + "".join(
        f'zone "{origin}" {{ type primary; file "{workdir / (origin + ".zone")}";{update} }};\n' for origin in zones
    ) + "".join(
        f'zone "{origin}" {{ type forward; forward only; forwarders {{ {host} port {to}; }}; }};\n'
        for origin, (host, to) in forwards.items()
    )
    listen = f"listen-on port {port} {{ {address}; }};\n  listen-on-v6 {{ none; }};"
    if ":" in address:
        listen = f"listen-on {{ none; }};\n  listen-on-v6 port {port} {{ {address}; }};"
    return (
        "options {\n"
        f'  directory "{workdir}";\n'
        f"  {listen}\n"
        f'  pid-file "{workdir}/named.pid";\n'
        f'  session-keyfile "{workdir}/session.key";\n'
        f'  managed-keys-directory "{workdir}";\n'
        f"  recursion {'yes; allow-recursion { any; }' if forwards else 'no'};\n"
        "  dnssec-validation no;\n"
        "  notify no;\n"
        "  allow-query { any; };\n"
        "};\n"
        "controls { };\n" + zone_blocks
    )


def start_named(
    workdir: Path, zones: Mapping[str, str], address: str = "127.0.0.1", port: int | None = None,
    forwards: Mapping[str, tuple[str, int]] | None = None, update_key: tuple[str, str, str] | None = None,
) -> NamedServer:
    """Start named serving `zones` ({origin: records relative to the origin}); SOA and NS are added. `forwards`
    ({origin: (address, port)}) makes it also answer for those zones by asking another server (rbldnsd).
    `update_key` ((name, algorithm, base64 secret)) lets the zones take RFC 2136 updates signed with it.

    Raises RuntimeError with named's own words when the config or a zone is broken or it does not answer.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port([address], (socket.SOCK_STREAM, socket.SOCK_DGRAM))
    for origin, records in zones.items():
        (workdir / f"{origin}.zone").write_text(_zone_text(origin.rstrip("."), records, address))
    conf = workdir / "named.conf"
    conf.write_text(_config(workdir, address, port, {o.rstrip("."): r for o, r in zones.items()}, forwards or {},
                            update_key))
    check = subprocess.run([NAMED_CHECKCONF, "-z", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"named-checkconf refused the test zones:\n{check.stdout}{check.stderr}")
    log = open(workdir / "named.log", "wb")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen([NAMED, "-g", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = NamedServer(address, port, workdir, process)
    _wait_ready(server, next(iter(zones)).rstrip("."))
    return server


def _wait_ready(server: NamedServer, origin: str, timeout: float = 15.0) -> None:
    query = dns.message.make_query(origin, "SOA")

    def answers() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(f"named exited with {server.process.returncode}:\n{server.log()}")
        try:
            reply = dns.query.udp(query, server.address, port=server.port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    try:
        wait_until(answers, timeout, f"named to answer for {origin}", detail=server.log)
    except WaitTimeout:
        server.stop()
        raise


@pytest.fixture
def named_factory(tmp_path: Path) -> Iterator[Callable[..., NamedServer]]:
    """`named_factory({"example.test": "@ IN MX 10 mx\\nmx IN A 127.0.0.5"}, address="127.0.0.1")`."""
    servers: list[NamedServer] = []

    def start(zones: Mapping[str, str], address: str = "127.0.0.1") -> NamedServer:
        server = start_named(tmp_path / f"named{len(servers)}", zones, address)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
