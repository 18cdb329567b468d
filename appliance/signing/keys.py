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

import base64
import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from appliance.durable.files import fsync_dir, write_all

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
STATES = ("pending", "active", "retiring", "retired")
STATE_FILE = "keys.json"
LOCK_FILE = ".lock"
RSA_BITS = 2048  # RFC 8301 §3.2: at least 1024, 2048 recommended
# RFC 6376 §3.1: a selector is a sub-domain (dot-separated labels); a domain needs at least two labels.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")


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


# ---------------------------------------------------------------------------------------------- the selectors' state

@dataclass(frozen=True)
class KeyRecord:
    """One selector of a domain as keys.json holds it; times are Unix seconds, None until they happen."""

    selector: str
    algorithm: str
    state: str
    created: float
    seen: float | None = None  # its TXT record was first seen in DNS with this public key
    activated: float | None = None
    replaced: float | None = None  # it became retiring
    retire_at: float | None = None  # retiring: its record is withdrawn and its key file removed then
    retired: float | None = None

    @property
    def since(self) -> float:
        """When the selector entered its present state."""
        moment = {"pending": self.created, "active": self.activated, "retiring": self.replaced,
                  "retired": self.retired}[self.state]
        return self.created if moment is None else moment

    @property
    def published(self) -> bool:
        """Its record belongs in DNS: pending (so it can be seen), active and retiring."""
        return self.state != "retired"

    def moved(self, state: str, **times: float) -> KeyRecord:
        """This selector in ``state``, with the times of the move set."""
        return replace(self, state=state, **times)  # type: ignore[arg-type]


def check_domain(domain: str) -> str:
    """``domain`` lower case without its trailing dot; KeyStoreError when it is no domain name."""
    name = domain.strip().lower().rstrip(".")
    if len(name) > 253 or not _DOMAIN.match(name):
        raise KeyStoreError(f"{domain!r} is not a valid domain name")
    return name


def check_selector(selector: str) -> str:
    name = selector.strip().lower()
    if len(name) > 63 or not _SELECTOR.match(name):
        raise KeyStoreError(f"{selector!r} is not a valid selector (letters, digits, '-', labels separated by '.')")
    return name


# ---------------------------------------------------------------------------------------------- keys and records

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def generate_key(algorithm: str) -> bytes:
    """A new private key for ``algorithm`` as PKCS#8 PEM."""
    key: PrivateKey
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    elif algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise KeyStoreError(f"unknown algorithm {algorithm!r} (expected one of {', '.join(ALGORITHMS)})")
    return _pkcs8(key)


def _pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def read_private_key(pem: bytes, where: str) -> tuple[str, bytes]:
    """(algorithm, PKCS#8 PEM) of a PEM private key made anywhere (PKCS#1 or PKCS#8, unencrypted).

    KeyStoreError names ``where`` when it is no key, is encrypted, or is neither RSA (1024 bits or more) nor Ed25519.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyStoreError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:  # RFC 8301 §3.2: verifiers refuse shorter keys
            raise KeyStoreError(f"{where}: an RSA key of {key.key_size} bits is too short (at least 1024)")
        return "rsa-sha256", _pkcs8(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519-sha256", _pkcs8(key)
    raise KeyStoreError(f"{where}: a {type(key).__name__.removeprefix('_')} is neither RSA nor Ed25519")


def public_key_data(pem: bytes, where: str = "key") -> str:
    """The p= value of the key's record: base64 of the SubjectPublicKeyInfo (RSA, RFC 6376 §3.6.1) or of the raw
    32-byte public key (Ed25519, RFC 8463 §4.2)."""
    algorithm, _ = read_private_key(pem, where)
    key = serialization.load_pem_private_key(pem, password=None)
    public = key.public_key()
    if algorithm == "ed25519-sha256":
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def txt_record(algorithm: str, public: str) -> str:
    """The selector's TXT record (RFC 6376 §3.6.1), whole."""
    return f"v=DKIM1; k={'ed25519' if algorithm == 'ed25519-sha256' else 'rsa'}; p={public}"


def txt_strings(record: str) -> list[str]:
    """The record as character-strings of at most 255 octets (RFC 1035 §3.3.14), as a zone file holds it."""
    return [record[i:i + 255] for i in range(0, len(record), 255)] or [""]


def record_name(domain: str, selector: str) -> str:
    """Where the selector's record lives (RFC 6376 §3.6.2.1), absolute."""
    return f"{selector}._domainkey.{domain}."


def zone_line(domain: str, selector: str, algorithm: str, public: str, ttl: int = 3600) -> str:
    strings = " ".join(f'"{part}"' for part in txt_strings(txt_record(algorithm, public)))
    return f"{record_name(domain, selector)} {ttl} IN TXT {strings}"


def record_matches(text: str, algorithm: str, public: str) -> bool:
    """True when a TXT record's text (its strings joined) is a DKIM key record of this algorithm and public key.

    RFC 6376 §3.6.1: a tag list; k= defaults to rsa; whitespace inside p= is ignored (§3.2 FWS)."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if eq:
            tags.setdefault(name.strip(), value.strip())
    if tags.get("v", "DKIM1") != "DKIM1":
        return False
    kind = "ed25519" if algorithm == "ed25519-sha256" else "rsa"
    return tags.get("k", "rsa") == kind and "".join(tags.get("p", "").split()) == public


# ---------------------------------------------------------------------------------------------- writing the store

def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``data`` as the whole of ``path``, or ``path`` untouched: tmp + fsync + rename + fsync of the folder."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class DomainKeys:
    """The selectors of one domain as read from keys.json, changed in memory and written back whole."""

    def __init__(self, store: KeyStoreWriter, domain: str, records: list[KeyRecord]) -> None:
        self.store = store
        self.domain = domain
        self.records = records

    def get(self, selector: str) -> KeyRecord | None:
        return next((r for r in self.records if r.selector == selector), None)

    def set(self, record: KeyRecord) -> None:
        self.records = [record if r.selector == record.selector else r for r in self.records]
        if self.get(record.selector) is None:
            self.records.append(record)

    def private_pem(self, selector: str) -> bytes:
        path = self.store.root / self.domain / f"{selector}.pem"
        try:
            return path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"{path}: {exc.strerror or exc}") from None

    def public(self, selector: str) -> str:
        path = self.store.root / self.domain / f"{selector}.pem"
        return public_key_data(self.private_pem(selector), str(path))


class KeyStoreWriter(KeyStore):
    """The key store the rotation and the CLI write: the reader's view plus the selectors' whole state.

    Writers take the domain's lock (``lock``) around a read-change-write, so the CLI and the periodic pass of the
    queue process never write over each other's change."""

    def domains(self) -> list[str]:
        """The domains with a keys.json, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{STATE_FILE}"))

    def read(self, domain: str) -> DomainKeys:
        """Every selector of ``domain`` (none when it has no keys.json); KeyStoreError names a damaged file."""
        path = self.root / domain / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return DomainKeys(self, domain, [])
        except OSError as exc:
            raise KeyStoreError(f"{path}: {exc.strerror or exc}") from None
        return DomainKeys(self, domain, _parse_state(raw, path))

    def write(self, keys: DomainKeys) -> None:
        """keys.json of the domain, whole and atomically (the signers reload it by its mtime and size)."""
        folder = self.root / keys.domain
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {"domain": keys.domain, "keys": [asdict(r) for r in keys.records]}
        _atomic_write(folder / STATE_FILE, (json.dumps(body, indent=2) + "\n").encode(), mode=0o644)

    def write_key(self, domain: str, selector: str, pem: bytes) -> None:
        """The private key file, mode 0600, atomically; written before keys.json names it."""
        folder = self.root / domain
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _atomic_write(folder / f"{selector}.pem", pem, mode=0o600)

    def remove_key(self, domain: str, selector: str) -> None:
        (self.root / domain / f"{selector}.pem").unlink(missing_ok=True)
        fsync_dir(self.root / domain)

    @contextlib.contextmanager
    def lock(self, domain: str) -> Iterator[None]:
        """The domain's writers one at a time (fcntl.flock on <domain>/.lock); held only for a read-change-write."""
        folder = self.root / domain
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


_FIELDS = ("selector", "algorithm", "state", "created")
_TIMES = ("seen", "activated", "replaced", "retire_at", "retired")


def _parse_state(raw: bytes, path: Path) -> list[KeyRecord]:
    """The records of keys.json, each field checked, so that a damaged file is refused whole and by name."""
    try:
        doc = json.loads(raw)
        entries = doc["keys"]
        if not isinstance(entries, list):
            raise TypeError("'keys' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"{path}: not a key store ({type(exc).__name__}: {exc})") from None
    records: list[KeyRecord] = []
    for i, entry in enumerate(entries):
        where = f"{path}: keys[{i}]"
        if not isinstance(entry, dict) or any(k not in entry for k in _FIELDS):
            raise KeyStoreError(f"{where}: needs {', '.join(_FIELDS)}")
        selector, algorithm, state = entry["selector"], entry["algorithm"], entry["state"]
        if not isinstance(selector, str) or not _SELECTOR.match(selector):
            raise KeyStoreError(f"{where}: bad selector {selector!r}")
        if algorithm not in ALGORITHMS:
            raise KeyStoreError(f"{where}: unknown algorithm {algorithm!r}")
        if state not in STATES:
            raise KeyStoreError(f"{where}: unknown state {state!r}")
        times = {k: entry.get(k) for k in ("created", *_TIMES)}
        for name, value in times.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise KeyStoreError(f"{where}: {name} is not a time ({value!r})")
        if times["created"] is None:
            raise KeyStoreError(f"{where}: created is not a time (None)")
        if any(r.selector == selector for r in records):
            raise KeyStoreError(f"{where}: selector {selector!r} is listed twice")
        records.append(KeyRecord(selector, algorithm, state, times["created"], times["seen"], times["activated"],
                                 times["replaced"], times["retire_at"], times["retired"]))
    return records
