"""The signing keys of each domain on disk, and the state of each selector.

Layout, under ``Config.dkim_dir`` (data_dir/dkim unless dkim.keys_dir says otherwise)::

    <domain>/keys.json           the selectors of the domain and their state (written whole, atomically)
    <domain>/<selector>.pem      a private key, PKCS#8 PEM, mode 0600 (RSA 2048 or Ed25519)

A selector is ``pending`` (made, not yet seen in DNS), ``active`` (signs: at most one per algorithm),
``retiring`` (replaced; its record stays published until ``retire_at``) or ``retired`` (no longer published).
Only ``active`` keys sign. Readers (the signing check in every SMTP process) reload a domain's state when its
keys.json changes on disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
STATES = ("pending", "active", "retiring", "retired")
STATE_FILE = "keys.json"


class KeyStoreError(Exception):
    """The key store on disk is unreadable or inconsistent; the message names the file and what is wrong."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str  # one of ALGORITHMS
    private_pem: bytes


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[int, int]  # (st_mtime_ns, st_size) of keys.json when read
    active: tuple[SigningKey, ...]


class KeyStore:
    """The keys under one directory, read lazily per domain and re-read when the domain's keys.json changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, _Loaded] = {}

    def signing_keys(self, domain: str) -> tuple[SigningKey, ...]:
        """The active keys of ``domain`` (lower case, no trailing dot); empty when it has none."""
        path = self.root / domain / STATE_FILE
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(domain, None)
            return ()
        stamp = (st.st_mtime_ns, st.st_size)
        loaded = self._cache.get(domain)
        if loaded is None or loaded.stamp != stamp:
            loaded = _Loaded(stamp, self._read_active(domain, path))
            self._cache[domain] = loaded
        return loaded.active

    def _read_active(self, domain: str, path: Path) -> tuple[SigningKey, ...]:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["keys"]
            keys = []
            for entry in entries:
                if entry["state"] != "active":
                    continue
                if entry["algorithm"] not in ALGORITHMS:
                    raise KeyStoreError(f"{path}: selector {entry['selector']!r} has the unknown algorithm "
                                        f"{entry['algorithm']!r}")
                pem = (path.parent / f"{entry['selector']}.pem").read_bytes()
                keys.append(SigningKey(domain, entry["selector"], entry["algorithm"], pem))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{path}: {exc}") from exc
        return tuple(keys)
