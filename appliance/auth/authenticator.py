"""Password authentication for SMTP submission, IMAP and POP3, with per-IP failure counting and bans.

One ``Authenticator`` instance is shared by all protocol servers of a process; the failure counts and
bans live in SQLite (tables next to the directory by default) so that several mailfleet processes on the
host count together, the way fail2ban or Dovecot's auth penalty would see them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from appliance.auth.directory import Directory
from appliance.config.model import AuthConfig
from appliance.durable.sqlite import enable_wal, write_transaction

log = logging.getLogger("appliance.auth")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_failures (ip TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS auth_failures_ip ON auth_failures (ip, at);
CREATE TABLE IF NOT EXISTS auth_bans (ip TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
"""


def canonical_ip(client_ip: str) -> str:
    """Normalise an IP string so that ``::ffff:192.0.2.1`` and ``192.0.2.1`` count as one client."""
    try:
        addr = ipaddress.ip_address(client_ip.strip("[]").split("%")[0])
    except ValueError:
        return client_ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def is_loopback(client_ip: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (also in IPv4-mapped form)."""
    try:
        return ipaddress.ip_address(canonical_ip(client_ip)).is_loopback
    except ValueError:
        return False


def _printable(username: str) -> str:
    """A username safe to log: bounded length, control characters escaped."""
    return repr(username[:64] + ("..." if len(username) > 64 else ""))


class FailureCounter:
    """Authentication failures per client IP in a sliding window, and the bans they cause (SQLite)."""

    def __init__(
        self,
        db_path: pathlib.Path | str,
        threshold: int = 10,
        window: float = 600.0,
        ban_duration: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if threshold < 1:
            raise ValueError("ban threshold must be at least 1 failure")
        self.threshold = threshold
        self.window = window
        self.ban_duration = ban_duration
        self._clock = clock
        # Separate read and write connections: is_banned() runs on the event loop at every connect and
        # must never queue behind a writer waiting for SQLite's lock (WAL readers do not wait).
        self._lock, self._read_lock = threading.Lock(), threading.Lock()
        self._conn = self._connect(db_path)
        enable_wal(self._conn)
        self._conn.executescript(_SCHEMA)
        self._read_conn = self._connect(db_path)

    @staticmethod
    def _connect(db_path: pathlib.Path | str) -> sqlite3.Connection:
        conn = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def is_banned(self, ip: str) -> bool:
        with self._read_lock:
            row = self._read_conn.execute(
                "SELECT 1 FROM auth_bans WHERE ip = ? AND until > ?", (canonical_ip(ip), self._clock())
            ).fetchone()
        return row is not None

    def ban_until(self, ip: str) -> float | None:
        """Epoch time the ban of ``ip`` ends, or None when it is not banned."""
        with self._read_lock:
            row = self._read_conn.execute(
                "SELECT until FROM auth_bans WHERE ip = ? AND until > ?", (canonical_ip(ip), self._clock())
            ).fetchone()
        return None if row is None else row[0]

    def failures(self, ip: str) -> int:
        """Failures of ``ip`` inside the current window (reset when a ban starts)."""
        with self._read_lock:
            return self._read_conn.execute(
                "SELECT COUNT(*) FROM auth_failures WHERE ip = ? AND at > ?",
                (canonical_ip(ip), self._clock() - self.window),
            ).fetchone()[0]

    def record_failure(self, ip: str) -> bool:
        """Count one failure; True when it starts a ban (the ban is logged once, here)."""
        key, now = canonical_ip(ip), self._clock()
        with self._lock, write_transaction(self._conn) as conn:
            conn.execute("DELETE FROM auth_failures WHERE at <= ?", (now - self.window,))
            conn.execute("DELETE FROM auth_bans WHERE until <= ?", (now,))
            conn.execute("INSERT INTO auth_failures (ip, at) VALUES (?, ?)", (key, now))
            count = conn.execute("SELECT COUNT(*) FROM auth_failures WHERE ip = ?", (key,)).fetchone()[0]
            banned = count >= self.threshold
            if banned:
                conn.execute(
                    "INSERT OR REPLACE INTO auth_bans (ip, until) VALUES (?, ?)", (key, now + self.ban_duration)
                )
                conn.execute("DELETE FROM auth_failures WHERE ip = ?", (key,))
        if banned:
            log.warning(
                "banning %s for %ds after %d authentication failures within %ds",
                key, self.ban_duration, count, self.window,
            )
        return banned

    def unban(self, ip: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM auth_bans WHERE ip = ?", (canonical_ip(ip),))
            self._conn.execute("DELETE FROM auth_failures WHERE ip = ?", (canonical_ip(ip),))

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._conn.close()
            self._read_conn.close()


class Authenticator:
    """Checks passwords against the directory and bans IPs that fail too often.

    ``authenticate`` runs argon2 in a small dedicated thread pool: each verification takes ~64 MiB and
    tens of milliseconds, so the pool both keeps the event loop free and bounds memory under a flood.
    """

    def __init__(
        self,
        directory: Directory,
        settings: AuthConfig | None = None,
        *,
        state_path: pathlib.Path | str | None = None,
        max_parallel_verifications: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = settings or AuthConfig()
        self.directory = directory
        self.exempt_loopback = settings.exempt_loopback
        self.failures = FailureCounter(
            state_path if state_path is not None else directory.db_path,
            threshold=settings.ban_threshold,
            window=settings.ban_window,
            ban_duration=settings.ban_duration,
            clock=clock,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_parallel_verifications, thread_name_prefix="argon2")

    def set_directory(self, directory: Directory) -> None:
        """SIGHUP: the users, aliases and passwords of a new config; bans and their counts stay."""
        self.directory = directory

    def _exempt(self, client_ip: str) -> bool:
        return self.exempt_loopback and is_loopback(client_ip)

    def is_banned(self, client_ip: str) -> bool:
        """Servers call this at connect (and before each AUTH) to refuse banned clients early."""
        return not self._exempt(client_ip) and self.failures.is_banned(client_ip)

    async def authenticate(self, username: str, password: str, client_ip: str) -> str | None:
        """Canonical address of the user when the password matches, else None (failure counted).

        A banned client gets None without its password being checked.
        """
        if self.is_banned(client_ip):
            log.info("authentication from banned %s refused (user %s)", canonical_ip(client_ip), _printable(username))
            return None
        loop = asyncio.get_running_loop()
        address = None
        if username and password:
            address = await loop.run_in_executor(self._pool, self.directory.verify_password, username, password)
        if address is not None:
            log.info("user %s authenticated from %s", address, canonical_ip(client_ip))
            return address
        log.info("authentication failed for %s from %s", _printable(username), canonical_ip(client_ip))
        if not self._exempt(client_ip):
            await loop.run_in_executor(self._pool, self.failures.record_failure, client_ip)
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.failures.close()
