"""The real service with ManageSieve on loopback (127.0.54.0/24), and the clients' helpers.

``mailfleet serve`` runs in its own process, started once per variant for the whole session (a plaintext-on-
loopback one, a strict one, one for the ban test); each test logs in as a user of its own, so that the tests
share servers but no scripts. Scripts are checked by the service's own Sieve parser (appliance/sieve/).
"""

from __future__ import annotations

import itertools
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import argon2
import pytest
import yaml
from peers.mailfleet import RunningMailfleet
from peers.named import free_port

ADDRESS = "127.0.54.1"  # the service
CLIENT = "127.0.54.2"  # the clients' source address
PASSWORD = "sieve s3cret"
USERS = [f"user{i}@example.org" for i in range(12)]
GOOD = ('require ["fileinto"];\r\nif header :contains "subject" "spam" {\r\n  fileinto "Junk";\r\n}\r\n')
# a missing ';' after an action: invalid for every Sieve parser (RFC 5228 §2.9: a command ends with ';')
BAD = 'require ["fileinto"];\r\nif header :contains "subject" "spam" {\r\n  fileinto "Junk"\r\n}\r\n'
# cheap argon2id parameters: the logins of the tests cost little; the hash carries its own parameters
HASH = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
_users = itertools.cycle(USERS)
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Servers:
    """One running service per variant, started on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, RunningMailfleet] = {}

    def get(self, variant: str, **sections: Any) -> RunningMailfleet:
        if variant not in self.running:
            self.running[variant] = self._start(variant, sections)
        return self.running[variant]

    def _start(self, variant: str, sections: dict[str, Any]) -> RunningMailfleet:
        workdir = self.root / variant
        workdir.mkdir()
        ports = {service: free_port([ADDRESS]) for service in ("managesieve", "imap")}
        config = {"hostname": f"{variant}.test.example", "data_dir": str(workdir / "data"), "roles": ["primary"],
                  "listen": {service: [f"{ADDRESS}:{port}"] for service, port in ports.items()},
                  "primary": {"domains": ["example.org"],
                              "users": [{"address": user, "password_hash": HASH} for user in USERS]},
                  "sieve": {"max_script_size": 2048, "max_scripts": 3},
                  "smtp": {"workers": 0},  # no SMTP acceptor processes: ManageSieve runs in the queue process
                  **sections}
        path = workdir / "mailfleet.yml"
        path.write_text(yaml.safe_dump(config))
        server = RunningMailfleet(path, config, workdir / "server.log", ports=ports, address=ADDRESS)
        server.start()
        return server

    def stop(self) -> None:
        for server in self.running.values():
            server.kill()


@pytest.fixture(scope="session")
def sieve_servers(tmp_path_factory) -> Iterator[Servers]:
    servers = Servers(tmp_path_factory.mktemp("managesieve"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(autouse=True)
def _source_address(monkeypatch) -> None:
    """The clients (sievelib dials with socket.create_connection) connect from our own address."""
    monkeypatch.setattr(socket, "create_connection", partial(socket.create_connection, source_address=(CLIENT, 0)))


@pytest.fixture
def loopback_server(sieve_servers: Servers) -> RunningMailfleet:
    """Plaintext logins allowed on loopback (tls.plaintext_auth_on_loopback)."""
    return sieve_servers.get("loopback", tls={"plaintext_auth_on_loopback": True})


@pytest.fixture
def strict_server(sieve_servers: Servers) -> RunningMailfleet:
    """The production default: no plaintext login before STARTTLS."""
    return sieve_servers.get("strict", tls={"plaintext_auth_on_loopback": False})


@pytest.fixture
def user() -> str:
    """A user of its own for this test: no scripts left by another."""
    return next(_users)


def scripts_folder(server: RunningMailfleet, user: str) -> Path:
    local, _, domain = user.partition("@")
    return server.data_dir / "sieve" / domain / local


def certificate(server: RunningMailfleet) -> Path:
    """The service's self-signed certificate (no tls.cert configured): what the clients trust."""
    return server.data_dir / "tls" / "selfsigned.crt"


class Raw:
    """A ManageSieve client at the byte level, for what the library clients cannot send."""

    def __init__(self, server: RunningMailfleet) -> None:
        self.sock = socket.create_connection((ADDRESS, server.ports["managesieve"]), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> list[bytes]:
        """Lines up to and including the OK, NO or BYE line (literals inlined)."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed: " + repr(lines))
            literal = _LITERAL_AT_END.search(line)
            if literal:  # a data line or a status line's text sent as a literal: take it whole
                line += self.file.read(int(literal.group(1))) + self.file.readline()
            lines.append(line)
            if line[:2] in (b"OK", b"NO") or line[:3] == b"BYE":
                return lines

    def command(self, data: bytes) -> list[bytes]:
        self.send(data + b"\r\n")
        return self.response()

    def starttls(self, server: RunningMailfleet) -> list[bytes]:
        assert self.command(b"STARTTLS")[-1].startswith(b"OK")
        context = ssl.create_default_context(cafile=str(certificate(server)))
        context.check_hostname = False
        self.sock = context.wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")
        return self.response()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client() -> Iterator[Callable[[RunningMailfleet], Raw]]:
    opened: list[Raw] = []

    def connect(server: RunningMailfleet) -> Raw:
        client = Raw(server)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()
