"""A real IMAP server on loopback ports (plain + implicit TLS) with a real store and an argon2 authenticator.

The server runs its own asyncio loop in a thread so that blocking clients (imaplib, imapclient,
mbsync) can talk to it from the test.
"""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import argon2
import pytest
from peers.tls import CertPair, self_signed_cert

from appliance.imap.server import start_imap
from appliance.store import MailStore

PASSWORD = "s3cret pass"


class Argon2Authenticator:
    """A small real authenticator: address -> argon2id hash, as the user directory stores them."""

    def __init__(self) -> None:
        self.hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        self.users: dict[str, str] = {}
        self.attempts: list[tuple[str, str]] = []

    def is_banned(self, client_ip: str) -> bool:
        return False

    def add(self, address: str, password: str) -> None:
        self.users[address.lower()] = self.hasher.hash(password)

    async def authenticate(self, username: str, password: str, client_ip: str) -> str | None:
        self.attempts.append((username, client_ip))
        stored = self.users.get(username.lower())
        if stored is None:
            return None
        try:
            self.hasher.verify(stored, password)
        except argon2.exceptions.VerificationError:
            return None
        return username.lower()


@dataclass
class ImapServer:
    host: str
    port: int
    tls_port: int
    store: MailStore
    authenticator: Argon2Authenticator
    cert: CertPair
    loop: asyncio.AbstractEventLoop
    servers: list = field(default_factory=list)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert.cert))

    def imaplib(self, user: str = "alice@example.org", password: str = PASSWORD) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.host, self.port, timeout=30)
        if user:
            conn.login(user, password)
        return conn

    def deliver(self, data: bytes, address: str = "alice@example.org", **kwargs) -> int:
        return self.store.deliver(address, data, **kwargs)


def run_server(tmp_path: Path, plaintext_on_loopback: bool = True, host: str = "127.0.0.1",
               users: tuple[str, ...] = ("alice@example.org", "bob@example.org"), limits: object = None,
               imaps: bool = True) -> Iterator[ImapServer]:
    """The real IMAP server (and IMAPS unless ``imaps`` is false) on ``host``, in a thread of its own with its
    own event loop, until the generator is closed: the one the IMAP test modules share."""
    cert = self_signed_cert(tmp_path / "tls", "localhost", (host,))
    store = MailStore(tmp_path / "mail")
    auth = Argon2Authenticator()
    for user in users:
        auth.add(user, PASSWORD)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    extra = () if limits is None else (limits,)
    servers = asyncio.run_coroutine_threadsafe(
        start_imap([(host, 0)], [(host, 0)] if imaps else [], store, auth, cert.server_context(),
                   "imap.example.org", plaintext_on_loopback, *extra), loop).result(10)
    server = ImapServer(host, servers[0].sockets[0].getsockname()[1],
                        servers[1].sockets[0].getsockname()[1] if imaps else 0, store, auth, cert, loop, servers)
    try:
        yield server
    finally:
        async def stop() -> None:
            for s in servers:
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()


@pytest.fixture
def imap_server(tmp_path: Path) -> Iterator[ImapServer]:
    """Plaintext LOGIN allowed on loopback (like the demo config)."""
    yield from run_server(tmp_path, plaintext_on_loopback=True)


@pytest.fixture
def strict_imap_server(tmp_path: Path) -> Iterator[ImapServer]:
    """Production default: no plaintext authentication before TLS."""
    yield from run_server(tmp_path, plaintext_on_loopback=False)


class RawClient:
    """Speaks IMAP byte-for-byte over a socket, for exact-response and malformed-input tests."""

    def __init__(self, host: str, port: int, tls_context: ssl.SSLContext | None = None) -> None:
        import socket

        sock = socket.create_connection((host, port), timeout=20)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline()

    def command(self, tag: str, text: bytes | str) -> list[bytes]:
        """Send one command line and return every response line up to and including the tagged one."""
        if isinstance(text, str):
            text = text.encode()
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.until(tag)

    def until(self, tag: str) -> list[bytes]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection; got " + repr(lines))
            # inline literals so each response is one element
            while line.rstrip().endswith(b"}") and b"{" in line:
                size = int(line.rstrip()[line.rstrip().rfind(b"{") + 1:-1].rstrip(b"+"))
                line += self.file.read(size) + self.file.readline()
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def login(self, user: str = "alice@example.org", password: str = PASSWORD) -> None:
        reply = self.command("L0", f'LOGIN "{user}" "{password}"')
        assert reply[-1].startswith(b"L0 OK"), reply

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(imap_server: ImapServer) -> Iterator[RawClient]:
    client = RawClient(imap_server.host, imap_server.port)
    yield client
    client.close()
