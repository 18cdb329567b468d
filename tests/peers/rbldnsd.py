"""A real rbldnsd (Debian's) on a loopback address and free port, serving DNSBL/DNSWL zones the test writes.

Each zone is an ip4set file in a directory of its own that rbldnsd chroots into (``-r``); rbldnsd checks
the files for changes every second (``-c 1``) and reloads them by itself, so a test lists or delists a client
by rewriting a file and waiting until the server answers the new way. Use as a pytest plugin
(`pytest_plugins = ["peers.rbldnsd"]`) for the `rbldnsd_factory` fixture.
"""

from __future__ import annotations

import os
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

from appliance.dns.dnsbl import query_name

from .named import free_port
from .process import stop_process

RBLDNSD = "/usr/sbin/rbldnsd"


@dataclass
class RbldnsdServer:
    address: str
    port: int
    root: Path
    process: subprocess.Popen = field(repr=False)
    _stamp: int = 0

    def log(self) -> str:
        return (self.root.parent / "rbldnsd.log").read_text(errors="replace")

    def answer(self, ip: str, zone: str) -> tuple[str, ...] | None:
        """The A records rbldnsd gives for `ip` in `zone` now; () when not listed; None when it does not answer."""
        query = dns.message.make_query(query_name(ip, zone), "A")
        try:
            reply = dns.query.udp(query, self.address, port=self.port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            return None
        if reply.rcode() == dns.rcode.NXDOMAIN:
            return ()
        return tuple(rr.to_text() for rrset in reply.answer for rr in rrset)

    def write(self, zone: str, entries: Mapping[str, str]) -> None:
        """Replace `zone`'s list with `entries` ({ip or CIDR: return code}) and wait until rbldnsd serves it.

        The file's mtime is moved on by hand: rbldnsd compares whole seconds, and two writes within one second
        would look unchanged to it."""
        path = self.root / _file(zone)
        path.write_text(_ip4set(entries))
        path.chmod(0o644)
        self._stamp += 2
        stat = path.stat()
        os.utime(path, (stat.st_atime, stat.st_mtime + self._stamp))
        for ip, code in entries.items():
            if "/" not in ip:
                wait_until(lambda ip=ip, code=code: self.answer(ip, zone) == (code,), 15,
                           f"rbldnsd to list {ip} in {zone} as {code}", detail=self.log)

    def delist(self, zone: str, ip: str, remaining: Mapping[str, str]) -> None:
        """Rewrite `zone` with `remaining` (without `ip`) and wait until rbldnsd answers NXDOMAIN for `ip`."""
        self.write(zone, remaining)
        wait_until(lambda: self.answer(ip, zone) == (), 15, f"rbldnsd to delist {ip} from {zone}", detail=self.log)

    def stop(self) -> None:
        stop_process(self.process)


def _file(zone: str) -> str:
    return zone.rstrip(".") + ".ip4set"


def _ip4set(entries: Mapping[str, str]) -> str:
    """rbldnsd's ip4set format: one address or CIDR per line with its own return code (`:code:text`)."""
    lines = ["# written by the test"]
    lines += [f"{ip} :{code}:listed by the test" for ip, code in entries.items()]
    return "\n".join(lines) + "\n"


def start_rbldnsd(workdir: Path, zones: Mapping[str, Mapping[str, str]], address: str = "127.0.0.1") -> RbldnsdServer:
    """Start rbldnsd serving `zones` ({zone: {ip or CIDR: return code}}) and wait until it answers."""
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    # rbldnsd chroots into root and then runs as nobody: the directory and files must be readable by it.
    for path in (workdir, root):
        path.chmod(0o755)
    for zone, entries in zones.items():
        (root / _file(zone)).write_text(_ip4set(entries))
        (root / _file(zone)).chmod(0o644)
    port = free_port([address], (socket.SOCK_STREAM, socket.SOCK_DGRAM))
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # as non-root it cannot switch users (nor chroot)
    chroot = ["-r", str(root)] if os.geteuid() == 0 else ["-w", str(root)]
    command = [RBLDNSD, "-n", *user, "-b", f"{address}/{port}", *chroot, "-c", "1", "-q"]
    command += [f"{zone}:ip4set:{_file(zone)}" for zone in zones]
    log = open(workdir / "rbldnsd.log", "wb")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = RbldnsdServer(address, port, root, process)
    first = next(iter(zones))

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"rbldnsd exited with {process.returncode}:\n{server.log()}")
        return server.answer("127.0.0.1", first) is not None

    try:
        wait_until(answers, 15, f"rbldnsd to answer for {first}", detail=server.log)
    except WaitTimeout:
        server.stop()
        raise
    return server


@pytest.fixture
def rbldnsd_factory(tmp_path: Path) -> Iterator[Callable[..., RbldnsdServer]]:
    """`rbldnsd_factory({"bl.test": {"127.0.33.2": "127.0.0.2"}})`."""
    servers: list[RbldnsdServer] = []

    def start(zones: Mapping[str, Mapping[str, str]], address: str = "127.0.0.1") -> RbldnsdServer:
        server = start_rbldnsd(tmp_path / f"rbldnsd{len(servers)}", zones, address)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
