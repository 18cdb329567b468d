"""DNSSEC peers: a zone signed with dnssec-keygen + dnssec-signzone and served by BIND, and a validating
unbound (Debian's) on a loopback address that trusts that zone's key and forwards to BIND (stub-zone).

``start_signed_zone`` returns the BIND server and the trust anchor; ``start_unbound`` a resolver whose
answers carry AD for the signed data and SERVFAIL for data whose signature does not verify.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
from waits import WaitTimeout, wait_until

from .named import NAMED, NamedServer, _config, _wait_ready, _zone_text, free_port
from .process import stop_process

UNBOUND = "/usr/sbin/unbound"
UNBOUND_CHECKCONF = "/usr/sbin/unbound-checkconf"
KEYGEN = "/usr/bin/dnssec-keygen"
SIGNZONE = "/usr/bin/dnssec-signzone"


def _run(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def start_signed_zone(workdir: Path, origin: str, records: str, address: str,
                      tamper: Callable[[str], str] = lambda text: text) -> tuple[NamedServer, Path]:
    """BIND serving `origin` signed (ECDSA P-256, a KSK and a ZSK); `tamper` edits the signed zone text
    (to break a signature). Returns the server and the trust anchor file (the KSK's DNSKEY)."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    ksk = _run(KEYGEN, "-q", "-K", str(keys), "-a", "ECDSAP256SHA256", "-f", "KSK", origin, cwd=workdir)
    _run(KEYGEN, "-q", "-K", str(keys), "-a", "ECDSAP256SHA256", origin, cwd=workdir)
    port = free_port([address], (socket.SOCK_STREAM, socket.SOCK_DGRAM))
    unsigned = workdir / f"{origin}.unsigned"
    unsigned.write_text(_zone_text(origin, records, address))
    signed = workdir / f"{origin}.zone"
    _run(SIGNZONE, "-S", "-K", str(keys), "-o", origin, "-f", str(signed), str(unsigned), cwd=workdir)
    signed.write_text(tamper(signed.read_text()))
    conf = workdir / "named.conf"
    conf.write_text(_config(workdir, address, port, {origin: ""}, {}))
    log = open(workdir / "named.log", "wb")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen([NAMED, "-g", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = NamedServer(address, port, workdir, process)
    _wait_ready(server, origin)
    return server, keys / f"{ksk}.key"


@dataclass
class UnboundServer:
    address: str
    port: int
    workdir: Path
    process: subprocess.Popen = field(repr=False)

    def log(self) -> str:
        return (self.workdir / "unbound.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def start_unbound(workdir: Path, address: str, zone: str, upstream: NamedServer, trust_anchor: Path) -> UnboundServer:
    """A validating unbound on `address` that asks `upstream` for `zone` and trusts `trust_anchor` for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port([address], (socket.SOCK_STREAM, socket.SOCK_DGRAM))
    conf = workdir / "unbound.conf"
    conf.write_text(
        "server:\n"
        f"  interface: {address}@{port}\n"
        f"  port: {port}\n"
        "  do-daemonize: no\n"
        '  username: ""\n'
        '  chroot: ""\n'
        f'  directory: "{workdir}"\n'
        f'  pidfile: "{workdir}/unbound.pid"\n'
        "  use-syslog: no\n"
        f'  logfile: "{workdir}/unbound.log"\n'
        "  verbosity: 1\n"
        "  val-log-level: 2\n"
        "  do-ip6: no\n"
        "  do-not-query-localhost: no\n"
        "  access-control: 127.0.0.0/8 allow\n"
        '  module-config: "validator iterator"\n'
        f'  trust-anchor-file: "{trust_anchor}"\n'
        '  local-zone: "test." nodefault\n'  # RFC 6761 names are answered locally by default
        "  qname-minimisation: no\n"
        "  harden-referral-path: no\n"
        "  target-fetch-policy: \"0 0 0 0 0\"\n"
        "remote-control:\n"
        "  control-enable: no\n"
        "stub-zone:\n"
        f'  name: "{zone}"\n'
        f"  stub-addr: {upstream.address}@{upstream.port}\n"
    )
    check = subprocess.run([UNBOUND_CHECKCONF, str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"unbound-checkconf refused the config:\n{check.stdout}{check.stderr}")
    process = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    server = UnboundServer(address, port, workdir, process)
    query = dns.message.make_query(zone, "SOA", want_dnssec=True)

    def validated() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"unbound exited with {process.returncode}")
        try:
            reply = dns.query.udp(query, address, port=port, timeout=0.3)
        except (dns.exception.Timeout, OSError):
            return False
        return bool(reply.flags & dns.flags.AD)

    try:
        wait_until(validated, 15.0, f"unbound to validate {zone}", detail=lambda: server.log())
    except WaitTimeout:
        server.stop()
        raise
    return server
