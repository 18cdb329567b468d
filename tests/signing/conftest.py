"""The signing tests' DNS: a real BIND on 127.0.41.53 port 53 (this piece's own address), serving the test keys,
so that verifiers which only read /etc/resolv.conf (OpenDKIM's libc resolver, dkimpy's dnspython) ask it from a
private mount namespace whose resolv.conf names it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers.named import NamedServer, start_named

from .keys_on_disk import TestKey, write_keys

DNS_ADDRESS = "127.0.41.53"
SIGNED = ("example.org", "gw.example.org")  # a fleet domain, and the gateway's own name (its DSNs' From)
ZONES_EXTRA = {
    "outside.test": '@ IN TXT "v=spf1 ip4:127.0.41.30 -all"\nmail IN A 127.0.41.30\n',
    "41.0.127.in-addr.arpa": "30 IN PTR mail.outside.test.\n",
}


@dataclass
class SigningDNS:
    named: NamedServer
    keys_dir: Path
    keys: dict[str, list[TestKey]]
    resolv_conf: Path

    def run(self, command: list[str], data: bytes) -> subprocess.CompletedProcess:
        """``command`` with ``data`` on stdin, in a mount namespace whose /etc/resolv.conf names our BIND."""
        script = f'mount --bind {self.resolv_conf} /etc/resolv.conf && exec "$@"'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, "verifier", *command], input=data,
                              capture_output=True, timeout=60)


@pytest.fixture(scope="package")
def signing_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningDNS]:
    workdir = tmp_path_factory.mktemp("signing-dns")
    keys_dir = workdir / "dkim"
    keys = {domain: write_keys(keys_dir, domain) for domain in SIGNED}
    records = "".join(k.record + "\n" for made in keys.values() for k in made)
    # BIND listens only on addresses an interface has: ours goes on lo for the tests' lifetime.
    added = subprocess.run(["ip", "addr", "add", f"{DNS_ADDRESS}/32", "dev", "lo"], capture_output=True, text=True)
    if added.returncode != 0 and "exists" not in added.stderr:
        raise RuntimeError(f"cannot add {DNS_ADDRESS} to lo: {added.stderr.strip()}")
    named = start_named(workdir / "named", {"example.org": records, **ZONES_EXTRA}, DNS_ADDRESS, 53)
    resolv = workdir / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\noptions timeout:2 attempts:2\n")
    try:
        yield SigningDNS(named, keys_dir, keys, resolv)
    finally:
        named.stop()
        if added.returncode == 0:
            subprocess.run(["ip", "addr", "del", f"{DNS_ADDRESS}/32", "dev", "lo"], capture_output=True)
