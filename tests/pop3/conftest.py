"""A real POP3 server on loopback ports, with a real store, directory and authenticator."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import argon2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.auth.authenticator import Authenticator
from appliance.auth.directory import Directory
from appliance.config.model import AuthConfig
from appliance.pop3.server import start_pop3
from appliance.store import MailStore

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def client_tls(tls_files) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    return context


@dataclass
class Pop3Fixture:
    port: int
    tls_port: int
    store: MailStore
    directory: Directory
    authenticator: Authenticator
    cert: Path

    def deliver(self, data: bytes, address: str = "alice@example.org") -> int:
        return self.store.deliver(address, data)


async def _start(tmp_path, tls_files, plaintext_on_loopback: bool, idle_timeout: float = 600.0, **auth_kwargs):
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    directory = Directory(tmp_path / "directory.sqlite", config_domains=["example.org"], password_hasher=hasher)
    directory.add_user("alice@example.org", PASSWORD)
    directory.add_user("bob@example.org", PASSWORD)
    authenticator = Authenticator(directory, AuthConfig(**auth_kwargs))
    store = MailStore(tmp_path / "mail")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
    servers = await start_pop3(["127.0.0.1:0"], ["127.0.0.1:0"], store, authenticator, context, "pop.example.org",
                               plaintext_on_loopback, idle_timeout=idle_timeout)
    fixture = Pop3Fixture(servers[0].sockets[0].getsockname()[1], servers[1].sockets[0].getsockname()[1],
                          store, directory, authenticator, tls_files[0])
    return fixture, servers


@pytest.fixture
async def pop3(tmp_path, tls_files):
    """Plaintext auth allowed on loopback (like the demo config)."""
    fixture, servers = await _start(tmp_path, tls_files, True)
    yield fixture
    await _stop(fixture, servers)


@pytest.fixture
async def pop3_strict(tmp_path, tls_files):
    """Production setting: no clear-text auth before TLS, even on loopback; bans after 3 failures."""
    fixture, servers = await _start(tmp_path, tls_files, False, ban_threshold=3)
    yield fixture
    await _stop(fixture, servers)


@pytest.fixture
async def pop3_short_idle(tmp_path, tls_files):
    """A server whose autologout timer is half a second (RFC 1939 §3 asks >= 10 minutes in production)."""
    fixture, servers = await _start(tmp_path, tls_files, True, idle_timeout=0.5)
    yield fixture
    await _stop(fixture, servers)


async def _stop(fixture: Pop3Fixture, servers) -> None:
    for server in servers:
        server.close()
        await server.wait_closed()
    fixture.authenticator.close()
    fixture.store.close()
    fixture.directory.close()
