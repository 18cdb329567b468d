"""The user directory: domains, users, aliases, catch-all and quotas.

Two sources are merged on every lookup:

* the config file's ``primary:`` section (pre-hashed users, aliases, catch-all, domains rendered by
  Ansible) — read-only here: the CLI refuses to change or delete those entries and says so;
* ``data_dir/directory.sqlite`` (WAL), managed with ``mailfleet user|alias|domain`` while the server runs.

No lookup result is cached: every call runs a fresh read transaction, so a user added by the CLI in
another process can log in on the very next attempt. Addresses are compared case-insensitively in both
local part and domain (see ``appliance.auth.addresses``). Clear-text passwords are hashed with argon2id
immediately and never stored or logged.
"""

from __future__ import annotations

import logging
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import argon2
import nacl.exceptions
import nacl.pwhash
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.auth.addresses import AddressError, domain_of, normalize_address, normalize_domain
from appliance.durable.sqlite import enable_wal, read_transaction, write_transaction

log = logging.getLogger("appliance.auth")

DB_FILENAME = "directory.sqlite"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,
    password_hash TEXT,
    quota INTEGER NOT NULL DEFAULT 0 CHECK (quota >= 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases (
    address TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (address, target)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catch_all (domain TEXT PRIMARY KEY, target TEXT NOT NULL) WITHOUT ROWID;
-- The users who may log in to the web console as administrators (web/access.py); a table of its own, so that
-- a directory made before the console opens unchanged.
CREATE TABLE IF NOT EXISTS admins (address TEXT PRIMARY KEY) WITHOUT ROWID;
"""

#: Alias chains deeper than this are treated as a configuration error (Postfix: virtual_alias_recursion_limit).
MAX_ALIAS_DEPTH = 20
#: An alias may not expand to more final addresses than this (Postfix: virtual_alias_expansion_limit).
MAX_EXPANSION = 1000


class DirectoryError(ValueError):
    """A refused directory change or lookup; the message is one line for the administrator."""


class ReadOnlyEntryError(DirectoryError):
    """The entry comes from the config file; only editing the config changes it."""


class NotFoundError(DirectoryError):
    """The named user, alias or domain does not exist."""


class AlreadyExistsError(DirectoryError):
    """The named user, alias or domain already exists."""


@dataclass(frozen=True)
class UserEntry:
    address: str
    quota: int
    can_login: bool
    source: str  # "config" or "directory"


@dataclass(frozen=True)
class AliasEntry:
    address: str  # "@domain" for a catch-all
    targets: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class DomainEntry:
    name: str
    source: str


@dataclass(frozen=True)
class _ConfigUser:
    address: str
    password_hash: str | None
    quota: int


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """Read a config user's field whether it is a dataclass or a plain mapping."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _checked(address: str) -> str:
    try:
        return normalize_address(address)
    except AddressError as exc:
        raise DirectoryError(str(exc)) from None


def _checked_domain(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except AddressError as exc:
        raise DirectoryError(str(exc)) from None


class Directory:
    """Merged view of the config's ``primary:`` section and the SQLite directory."""

    def __init__(
        self,
        db_path: pathlib.Path,
        config_users: Sequence[Any] = (),
        config_aliases: Mapping[str, Sequence[str]] = {},  # noqa: B006 - read only, never mutated
        config_catch_all: Mapping[str, str] = {},  # noqa: B006
        config_domains: Sequence[str] = (),
        password_hasher: argon2.PasswordHasher | None = None,
    ) -> None:
        self.db_path = pathlib.Path(db_path)
        self._hasher = password_hasher or argon2.PasswordHasher(type=argon2.Type.ID)
        self._dummy: str | None = None  # made on first need: hashing costs ~64 MiB and tens of ms
        self._config_domains = frozenset(_checked_domain(d) for d in config_domains)
        self._config_users: dict[str, _ConfigUser] = {}
        for user in config_users:
            address = _checked(_field(user, "address", ""))
            self._config_users[address] = _ConfigUser(
                address, _field(user, "password_hash"), int(_field(user, "quota", 0) or 0)
            )
        self._config_aliases = {
            _checked(alias): tuple(_checked(t) for t in targets) for alias, targets in config_aliases.items()
        }
        self._config_catch_all = {
            _checked_domain(domain): _checked(target) for domain, target in config_catch_all.items()
        }
        # Two connections: WAL readers never wait for a writer, so a lookup from the event loop stays
        # fast even while the CLI (or a rehash) holds the write lock.
        self._write_lock, self._read_lock = threading.Lock(), threading.Lock()
        self._conn = self._open()
        self._read_conn = self._connect()
        self._cache: dict[tuple[str, str], Any] = {}
        self._cache_version: int | None = None

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Directory:
        """Directory at ``config.data_dir/directory.sqlite`` merged with ``config.primary`` (if any)."""
        primary = getattr(config, "primary", None)
        if primary is not None:
            kwargs.setdefault("config_users", primary.users)
            kwargs.setdefault("config_aliases", primary.aliases)
            kwargs.setdefault("config_catch_all", primary.catch_all)
            kwargs.setdefault("config_domains", primary.domains)
        return cls(pathlib.Path(config.data_dir) / DB_FILENAME, **kwargs)

    # -- storage -------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _open(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        enable_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DirectoryError(
                f"{self.db_path}: directory schema version {version} is newer than this mailfleet "
                f"understands ({SCHEMA_VERSION})"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return conn

    def _cached(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """Answers of the per-message lookups (local domain? who gets this address? quota?), kept until any
        connection, from any process (the CLI), commits a change: SQLite's data_version tells, in one
        statement, where the lookup itself takes a transaction of three."""
        with self._read_lock:
            version = self._read_conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._cache_version:
                self._cache.clear()
                self._cache_version = version
            if (kind, key) in self._cache:
                return self._cache[(kind, key)]
        value = compute()
        with self._read_lock:
            if self._cache_version == version:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[(kind, key)] = value
        return value

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One fresh read transaction: a consistent snapshot of the latest committed state."""
        with self._read_lock, read_transaction(self._read_conn) as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; BEGIN IMMEDIATE so check-then-insert cannot race another process."""
        with self._write_lock, write_transaction(self._conn) as conn:
            yield conn

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._conn.close()
            self._read_conn.close()

    # -- domains -------------------------------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for ``domain`` is stored on this host."""
        try:
            name = normalize_domain(domain)
        except AddressError:
            return False
        if name in self._config_domains:
            return True
        return self._cached("domain", name, lambda: self._stored_domain(name))

    def _stored_domain(self, name: str) -> bool:
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is not None

    def list_domains(self) -> list[DomainEntry]:
        with self._read() as conn:
            stored = [row[0] for row in conn.execute("SELECT name FROM domains")]
        entries = [DomainEntry(d, "config") for d in self._config_domains]
        entries += [DomainEntry(d, "directory") for d in stored if d not in self._config_domains]
        return sorted(entries, key=lambda e: e.name)

    def add_domain(self, domain: str) -> str:
        name = _checked_domain(domain)
        if name in self._config_domains:
            raise AlreadyExistsError(f"domain {name}: already listed in the config file (primary.domains)")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise AlreadyExistsError(f"domain {name}: already exists")
            conn.execute("INSERT INTO domains (name) VALUES (?)", (name,))
        log.info("domain %s added", name)
        return name

    def delete_domain(self, domain: str) -> None:
        """Remove a domain; refused while users, aliases or a catch-all still live in it."""
        name = _checked_domain(domain)
        if name in self._config_domains:
            raise ReadOnlyEntryError(
                f"domain {name}: defined in the config file (primary.domains); remove it there instead"
            )
        in_domain = [u.address for u in self.list_users() if domain_of(u.address) == name]
        in_domain += [a.address for a in self.list_aliases() if domain_of(a.address.lstrip("@")) == name]
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise NotFoundError(f"domain {name}: no such domain")
            if in_domain:
                shown = ", ".join(in_domain[:3]) + (", ..." if len(in_domain) > 3 else "")
                raise DirectoryError(
                    f"domain {name}: still has {len(in_domain)} user(s)/alias(es) ({shown}); delete them first"
                )
            conn.execute("DELETE FROM domains WHERE name = ?", (name,))
        log.info("domain %s deleted", name)

    def _require_local(self, address: str) -> None:
        if not self.is_local_domain(domain_of(address)):
            raise DirectoryError(
                f"address {address}: domain {domain_of(address)} is not a local domain "
                "(add it with 'mailfleet domain add' or primary.domains)"
            )

    # -- users ---------------------------------------------------------------------------------------

    def _stored_user(self, conn: sqlite3.Connection, address: str) -> tuple[str | None, int] | None:
        row = conn.execute("SELECT password_hash, quota FROM users WHERE address = ?", (address,)).fetchone()
        return None if row is None else (row[0], row[1])

    def user_exists(self, address: str) -> bool:
        """True when ``address`` is a mailbox (config or directory user), not an alias."""
        try:
            key = normalize_address(address)
        except AddressError:
            return False
        if key in self._config_users:
            return True
        with self._read() as conn:
            return self._stored_user(conn, key) is not None

    def add_user(self, address: str, password: str | None, quota: int = 0) -> str:
        """Create a mailbox user; ``password`` None makes a mail-only user that cannot log in."""
        key = _checked(address)
        if quota < 0:
            raise DirectoryError(f"user {key}: quota must be 0 (unlimited) or a positive number of bytes")
        self._require_local(key)
        if key in self._config_users:
            raise AlreadyExistsError(f"user {key}: already defined in the config file (primary.users)")
        if key in self._config_aliases:
            raise AlreadyExistsError(f"user {key}: is an alias in the config file (primary.aliases)")
        hashed = None if password is None else self._hash(key, password)
        with self._write() as conn:
            if self._stored_user(conn, key) is not None:
                raise AlreadyExistsError(f"user {key}: already exists")
            conn.execute(
                "INSERT INTO users (address, password_hash, quota) VALUES (?, ?, ?)", (key, hashed, quota)
            )
        log.info("user %s added", key)
        return key

    def set_password(self, address: str, password: str | None) -> None:
        key = _checked(address)
        if key in self._config_users:
            raise ReadOnlyEntryError(
                f"user {key}: defined in the config file (primary.users); change its password_hash there"
            )
        hashed = None if password is None else self._hash(key, password)
        with self._write() as conn:
            if self._stored_user(conn, key) is None:
                raise NotFoundError(f"user {key}: no such user")
            conn.execute("UPDATE users SET password_hash = ? WHERE address = ?", (hashed, key))
        log.info("password of user %s changed", key)

    def set_quota(self, address: str, quota: int) -> None:
        key = _checked(address)
        if quota < 0:
            raise DirectoryError(f"user {key}: quota must be 0 (unlimited) or a positive number of bytes")
        if key in self._config_users:
            raise ReadOnlyEntryError(f"user {key}: defined in the config file (primary.users); set quota there")
        with self._write() as conn:
            if self._stored_user(conn, key) is None:
                raise NotFoundError(f"user {key}: no such user")
            conn.execute("UPDATE users SET quota = ? WHERE address = ?", (quota, key))

    def delete_user(self, address: str) -> None:
        """Remove the user from the directory; the stored mail is left in place for the administrator."""
        key = _checked(address)
        if key in self._config_users:
            raise ReadOnlyEntryError(
                f"user {key}: defined in the config file (primary.users); remove it there instead"
            )
        with self._write() as conn:
            if conn.execute("DELETE FROM users WHERE address = ?", (key,)).rowcount == 0:
                raise NotFoundError(f"user {key}: no such user")
            conn.execute("DELETE FROM admins WHERE address = ?", (key,))
        log.info("user %s deleted", key)

    # -- administrators of the web console --------------------------------------------------------------

    def set_admin(self, address: str, admin: bool) -> None:
        """Make a user (config or directory) an administrator of the web console, or no longer one."""
        key = _checked(address)
        if not self.user_exists(key):
            raise NotFoundError(f"user {key}: no such user")
        with self._write() as conn:
            if admin:
                conn.execute("INSERT OR IGNORE INTO admins (address) VALUES (?)", (key,))
            else:
                conn.execute("DELETE FROM admins WHERE address = ?", (key,))
        log.info("user %s %s an administrator", key, "is now" if admin else "is no longer")

    def is_admin(self, address: str) -> bool:
        try:
            key = normalize_address(address)
        except AddressError:
            return False
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM admins WHERE address = ?", (key,)).fetchone() is not None

    def list_admins(self) -> list[str]:
        with self._read() as conn:
            return sorted(row[0] for row in conn.execute("SELECT address FROM admins"))

    def list_users(self) -> list[UserEntry]:
        with self._read() as conn:
            stored = conn.execute("SELECT address, password_hash, quota FROM users").fetchall()
        entries = [
            UserEntry(u.address, u.quota, u.password_hash is not None, "config")
            for u in self._config_users.values()
        ]
        entries += [
            UserEntry(a, q, h is not None, "directory") for a, h, q in stored if a not in self._config_users
        ]
        return sorted(entries, key=lambda e: (domain_of(e.address), e.address))

    def quota(self, address: str) -> int:
        """Quota in bytes of a mailbox user; 0 means unlimited (also for unknown addresses)."""
        try:
            key = normalize_address(address)
        except AddressError:
            return 0
        if key in self._config_users:
            return self._config_users[key].quota
        return self._cached("quota", key, lambda: self._stored_quota(key))

    def _stored_quota(self, key: str) -> int:
        with self._read() as conn:
            stored = self._stored_user(conn, key)
        return 0 if stored is None else stored[1]

    # -- passwords -----------------------------------------------------------------------------------

    def _hash(self, address: str, password: str) -> str:
        if not password:
            raise DirectoryError(f"user {address}: empty password refused")
        return self._hasher.hash(password)

    def password_hash(self, address: str) -> str | None:
        """The stored argon2 hash, or None for unknown and mail-only users."""
        try:
            key = normalize_address(address)
        except AddressError:
            return None
        if key in self._config_users:
            return self._config_users[key].password_hash
        with self._read() as conn:
            stored = self._stored_user(conn, key)
        return None if stored is None else stored[0]

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash("mailfleet timing equaliser")
        return self._dummy

    def verify_password(self, address: str, password: str) -> str | None:
        """Canonical address when ``password`` matches, else None. Blocking (argon2): call from a thread.

        Unknown users are verified against a dummy hash so the answer takes as long as for a real one.
        """
        verified = self.verify(address, password)
        return None if verified is None else verified[0]

    def verify(self, address: str, password: str) -> tuple[str, str] | None:
        """``verify_password`` that also answers the hash that now proves the password (the one checked, or
        the rehash-on-login's): the login cache keeps it, and a hit counts only while it is still stored."""
        try:
            key = normalize_address(address)
        except AddressError:
            key = ""
        stored = self.password_hash(key) if key else None
        try:
            _check_password(self._hasher, stored or self._dummy_hash(), password)
        except (VerifyMismatchError, VerificationError):
            return None
        except InvalidHashError:
            log.error("user %s: stored password hash is not a valid argon2 hash; login refused", key)
            return None
        if stored is None:
            return None
        return key, self._rehash_if_needed(key, stored, password)

    def _rehash_if_needed(self, key: str, stored: str, password: str) -> str:
        """Upgrade a directory user's hash after a login when the argon2 parameters changed; the hash stored
        for the user now as far as this login knows (``stored`` when another change came first)."""
        if key in self._config_users or not self._hasher.check_needs_rehash(stored):
            return stored
        rehashed = self._hasher.hash(password)
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE users SET password_hash = ? WHERE address = ? AND password_hash = ?",
                (rehashed, key, stored),
            ).rowcount
        return rehashed if updated else stored

    # -- aliases and catch-all -----------------------------------------------------------------------

    def add_alias(self, address: str, targets: Sequence[str]) -> str:
        """Add ``targets`` to the alias ``address`` (created if new); ``@domain`` sets the catch-all.

        An alias may also be a user's own address: its mail then goes to the targets instead of the
        mailbox, unless the address lists itself among the targets (keep a copy, as in Postfix).
        """
        if not targets:
            raise DirectoryError(f"alias {address}: needs at least one target address")
        if address.strip().startswith("@"):
            if len(targets) != 1:
                raise DirectoryError(f"catch-all {address}: takes exactly one target address")
            return self.set_catch_all(address.strip()[1:], targets[0])
        key = _checked(address)
        self._require_local(key)
        if key in self._config_aliases:
            raise ReadOnlyEntryError(
                f"alias {key}: defined in the config file (primary.aliases); change it there instead"
            )
        checked = [_checked(t) for t in targets]
        with self._write() as conn:
            for target in checked:
                conn.execute("INSERT OR IGNORE INTO aliases (address, target) VALUES (?, ?)", (key, target))
        log.info("alias %s -> %s added", key, ", ".join(checked))
        return key

    def delete_alias(self, address: str, targets: Sequence[str] = ()) -> None:
        """Remove the given targets of an alias, or the whole alias when none are given."""
        if address.strip().startswith("@"):
            return self.delete_catch_all(address.strip()[1:])
        key = _checked(address)
        if key in self._config_aliases:
            raise ReadOnlyEntryError(
                f"alias {key}: defined in the config file (primary.aliases); remove it there instead"
            )
        checked = [_checked(t) for t in targets]
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM aliases WHERE address = ?", (key,)).fetchone():
                raise NotFoundError(f"alias {key}: no such alias")
            if not checked:
                conn.execute("DELETE FROM aliases WHERE address = ?", (key,))
            for target in checked:
                sql = "DELETE FROM aliases WHERE address = ? AND target = ?"
                if conn.execute(sql, (key, target)).rowcount == 0:
                    raise NotFoundError(f"alias {key}: has no target {target}")
        log.info("alias %s: %s deleted", key, ", ".join(checked) or "all targets")

    def set_catch_all(self, domain: str, target: str) -> str:
        name = _checked_domain(domain)
        if not self.is_local_domain(name):
            raise DirectoryError(f"catch-all @{name}: {name} is not a local domain")
        if name in self._config_catch_all:
            raise ReadOnlyEntryError(
                f"catch-all @{name}: defined in the config file (primary.catch_all); change it there instead"
            )
        checked = _checked(target)
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO catch_all (domain, target) VALUES (?, ?)", (name, checked))
        log.info("catch-all @%s -> %s set", name, checked)
        return "@" + name

    def delete_catch_all(self, domain: str) -> None:
        name = _checked_domain(domain)
        if name in self._config_catch_all:
            raise ReadOnlyEntryError(
                f"catch-all @{name}: defined in the config file (primary.catch_all); remove it there instead"
            )
        with self._write() as conn:
            if conn.execute("DELETE FROM catch_all WHERE domain = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"catch-all @{name}: none set")
        log.info("catch-all @%s deleted", name)

    def list_aliases(self) -> list[AliasEntry]:
        """All aliases and catch-alls (as ``@domain``), config entries first per address."""
        with self._read() as conn:
            rows = conn.execute("SELECT address, target FROM aliases ORDER BY address, target").fetchall()
            catch = conn.execute("SELECT domain, target FROM catch_all").fetchall()
        stored: dict[str, list[str]] = {}
        for address, target in rows:
            stored.setdefault(address, []).append(target)
        entries = [AliasEntry(a, t, "config") for a, t in self._config_aliases.items()]
        entries += [AliasEntry(a, tuple(t), "directory") for a, t in stored.items() if a not in self._config_aliases]
        entries += [AliasEntry("@" + d, (t,), "config") for d, t in self._config_catch_all.items()]
        entries += [AliasEntry("@" + d, (t,), "directory") for d, t in catch if d not in self._config_catch_all]
        return sorted(entries, key=lambda e: (domain_of(e.address.lstrip("@")), e.address))

    def _alias_targets(self, conn: sqlite3.Connection, key: str) -> tuple[str, ...]:
        if key in self._config_aliases:
            return self._config_aliases[key]
        rows = conn.execute("SELECT target FROM aliases WHERE address = ? ORDER BY target", (key,)).fetchall()
        return tuple(r[0] for r in rows)

    def _catch_all(self, conn: sqlite3.Connection, domain: str) -> str | None:
        if domain in self._config_catch_all:
            return self._config_catch_all[domain]
        row = conn.execute("SELECT target FROM catch_all WHERE domain = ?", (domain,)).fetchone()
        return None if row is None else row[0]

    def _is_user(self, conn: sqlite3.Connection, key: str) -> bool:
        return key in self._config_users or self._stored_user(conn, key) is not None

    # -- resolution ----------------------------------------------------------------------------------

    def resolve(self, address: str) -> list[str] | None:
        """Final delivery addresses for a recipient, or None when a local recipient is unknown.

        Order of lookup for each address: alias (may be a user's own address) -> mailbox user ->
        catch-all of its domain. Aliases expand recursively; an address met again on its own expansion
        path ends the branch (delivered if it is a mailbox, as Postfix does for "a -> a, b"). Addresses in
        non-local domains pass through unchanged (relay policy is the caller's business: check
        ``is_local_domain`` first). An alias that expands to nothing deliverable answers None so the
        sender is refused at RCPT rather than the mail being silently dropped. Duplicates are removed,
        order kept.
        """
        try:
            key = normalize_address(address)
        except AddressError:
            return None
        found = self._cached("resolve", key, lambda: self._resolve_stored(key))
        return None if found is None else list(found)

    def _resolve_stored(self, key: str) -> tuple[str, ...] | None:
        with self._read() as conn:
            found = self._expand(conn, key, (), 0)
        if not found:
            return None
        return tuple(dict.fromkeys(found))[:MAX_EXPANSION]

    def _expand(self, conn: sqlite3.Connection, key: str, path: tuple[str, ...], depth: int) -> list[str]:
        if depth > MAX_ALIAS_DEPTH:
            log.warning("alias chain deeper than %d at %s (via %s); branch dropped", MAX_ALIAS_DEPTH,
                        key, " -> ".join(path))
            return []
        targets = self._alias_targets(conn, key)
        if targets:
            out: list[str] = []
            for target in targets:
                if target == key or target in path:
                    if self._is_user(conn, target):
                        out.append(target)
                    else:
                        log.warning("alias loop %s -> %s; branch dropped", " -> ".join((*path, key)), target)
                    continue
                out.extend(self._expand(conn, target, (*path, key), depth + 1))
                if len(out) > MAX_EXPANSION:
                    break
            return out
        domain = domain_of(key)
        if domain not in self._config_domains and not conn.execute(
            "SELECT 1 FROM domains WHERE name = ?", (domain,)
        ).fetchone():
            return [key]
        if self._is_user(conn, key):
            return [key]
        catch_all = self._catch_all(conn, domain)
        if catch_all is None or catch_all == key or catch_all in path:
            return []
        return self._expand(conn, catch_all, (*path, key), depth + 1)


def _check_password(hasher: argon2.PasswordHasher, stored: str, password: str) -> None:
    """Raise VerifyMismatchError unless ``password`` matches ``stored``.

    An argon2id hash is checked by libsodium (PyNaCl, also Dovecot's argon2): it computes the same function
    with about two thirds of the CPU argon2-cffi's reference code spends on the default parameters (153 ms
    against 230 ms for m=64 MiB, t=3, p=4 on the reference machine), and a login check is the one place where
    argon2's cost is paid on every request. Other argon2 variants, and hashes libsodium does not take, go to
    argon2-cffi, which also raises InvalidHashError for what is not an argon2 hash at all.
    """
    if stored.startswith("$argon2id$"):
        try:
            if nacl.pwhash.argon2id.verify(stored.encode("ascii"), password.encode("utf-8")):
                return
        except nacl.exceptions.InvalidkeyError:
            argon2.extract_parameters(stored)  # libsodium says the same of a mangled hash: that is InvalidHashError
            raise VerifyMismatchError("password does not match") from None
        except (nacl.exceptions.CryptoError, ValueError, UnicodeError):
            pass  # not a hash libsodium reads (its limits on the parameters): argon2-cffi decides
    hasher.verify(stored, password)
