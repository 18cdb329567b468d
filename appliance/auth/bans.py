"""The ban store: which client addresses and networks are banned, why, until when, and the counts that lead there.

One SQLite file (``data_dir/bans.sqlite``) that every mailfleet process of the host opens, so that the SMTP
acceptors, the IMAP and POP3 servers and the ``mailfleet ban`` command all see and make the same bans, and the
bans survive a restart. It holds

- ``bans``: one row per banned address or network (a single address is a /32 or /128), with its reason
  ("login failures", "dictionary attack", or the administrator's text), the evidence, and its end (none for a
  manual ban without ``--for``). A lookup is a range query on fixed-width hex keys, so a network ban covers
  every address inside it;
- ``offenders``: how many bans an address has had and when the last one ended, for the escalation: a repeat
  offender's next ban lasts ``bans.escalation`` times the last one, up to ``bans.max_duration``, for as long as
  ``bans.memory`` remembers it;
- ``auth_attempts``: logins in the current window, reserved before the password is checked (``pending``) and
  kept when it was wrong, so that at most ``auth.ban_threshold`` guesses are in flight or made per window,
  however many sessions a client opens at once;
- ``unknown_recipients``: the unknown recipients an address tried within the dictionary window.

Lookups (``banned``) run on the event loop at every connection on a read connection of their own: in WAL mode
a reader never waits for a writer. Writes take SQLite's write lock at once (BEGIN IMMEDIATE) so that a
count-then-insert cannot race another process; callers run them in a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import Config
from appliance.config.model import AuthConfig, BansConfig
from appliance.durable.sqlite import enable_wal, write_transaction
from appliance.message.printable import printable

log = logging.getLogger("appliance.auth")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOGIN_FAILURES = "login failures"
DICTIONARY_ATTACK = "dictionary attack"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    network TEXT PRIMARY KEY, version INTEGER NOT NULL, first TEXT NOT NULL, last TEXT NOT NULL,
    since REAL NOT NULL, until REAL, reason TEXT NOT NULL, evidence TEXT NOT NULL, source TEXT NOT NULL,
    offence INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bans_range ON bans (version, first, last);
CREATE TABLE IF NOT EXISTS offenders (
    network TEXT PRIMARY KEY, bans INTEGER NOT NULL, last_until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS auth_attempts (
    id INTEGER PRIMARY KEY, ip TEXT NOT NULL, at REAL NOT NULL, pending INTEGER NOT NULL, user TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_attempts_ip ON auth_attempts (ip, at);
CREATE TABLE IF NOT EXISTS unknown_recipients (ip TEXT NOT NULL, at REAL NOT NULL, address TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS unknown_recipients_ip ON unknown_recipients (ip, at);
"""


class BanError(ValueError):
    """A ban request that cannot be honoured (a bad address, an exempt one); str() is the line to show."""


def store_path(config: Config) -> pathlib.Path:
    """Where the service and the ``mailfleet ban`` command find the bans of this host."""
    return config.data_dir / "bans.sqlite"


def canonical_ip(client_ip: str) -> str:
    """Normalise an IP string so that ``::ffff:192.0.2.1`` and ``192.0.2.1`` count as one client."""
    try:
        addr = ipaddress.ip_address(client_ip.strip("[]").split("%")[0])
    except ValueError:
        return client_ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def parse_network(text: str) -> Network:
    """``192.0.2.7``, ``192.0.2.0/24``, ``2001:db8::/48`` -> the network a ban covers; BanError saying why not."""
    value = text.strip()
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise BanError(f"{value!r} has host bits set (did you mean "
                           f"{ipaddress.ip_network(value, strict=False)}?)") from None
        raise BanError(f"{value!r} is not an IP address or network (such as 192.0.2.7, 192.0.2.0/24 or "
                       "2001:db8::/48)") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(mapped)
    return network


def span(seconds: float) -> str:
    """A duration as an administrator writes it in the config: 90 -> '90s', 14400 -> '4h'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Fixed-width hex, so that text order is numeric order within one IP version."""
    return format(int(address), "08x" if address.version == 4 else "032x")


def _starts(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """The first addresses (as keys) of every network that can hold ``address``, one per prefix length: a CIDR
    network covers an address exactly when it starts at the address with the host bits cleared. An indexed
    ``first IN (...)`` over these costs the same with one ban or ten thousand, as a range scan would not."""
    bits, value = address.max_prefixlen, int(address)
    width = "08x" if address.version == 4 else "032x"
    full = (1 << bits) - 1
    return list(dict.fromkeys(format(value & (full ^ ((1 << host) - 1)), width) for host in range(bits + 1)))


def _covering(conn: sqlite3.Connection, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
              now: float) -> Ban | None:
    """The ban in force that covers ``address`` (the longest, when several do), or None."""
    starts = _starts(address)
    row = conn.execute(
        f"SELECT {_BAN_COLUMNS} FROM bans WHERE version = ? AND first IN ({', '.join('?' * len(starts))}) "
        "AND last >= ? AND (until IS NULL OR until > ?) ORDER BY until IS NULL DESC, until DESC LIMIT 1",
        (address.version, *starts, _key(address), now)).fetchone()
    return Ban(*row) if row is not None else None


def _ip(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(canonical_ip(client_ip))
    except ValueError:
        return None


@dataclass(frozen=True)
class Ban:
    network: str  # 192.0.2.7/32, 2001:db8::/48
    since: float
    until: float | None  # None: until an administrator lifts it
    reason: str
    evidence: str
    source: str  # auto (the service) or admin (mailfleet ban add)
    offence: int  # the how-manieth ban of this address within bans.memory (1 for a first one, and for admin bans)

    @property
    def address(self) -> str:
        """The network as an administrator types it: a single address without its /32 or /128."""
        network = ipaddress.ip_network(self.network)
        return str(network.network_address) if network.num_addresses == 1 else self.network

    def as_dict(self) -> dict[str, object]:
        return {"address": self.address, "since": self.since, "until": self.until, "reason": self.reason,
                "evidence": self.evidence, "source": self.source, "offence": self.offence}


_BAN_COLUMNS = "network, since, until, reason, evidence, source, offence"


class BanStore:
    """The bans and the counts behind them, in one SQLite file shared by the host's processes."""

    def __init__(self, db_path: pathlib.Path | str, auth: AuthConfig | None = None, bans: BansConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.reconfigure(auth or AuthConfig(), bans or BansConfig())
        self.path = pathlib.Path(db_path)
        self._clock = clock
        self._lock, self._read_lock = threading.Lock(), threading.Lock()
        self._conn = self._connect(db_path)
        enable_wal(self._conn)
        self._conn.executescript(_SCHEMA)
        self._read_conn = self._connect(db_path)
        # What the read connection last saw (see _quiet): its data_version, and whether any ban was in force
        # and any unknown recipient counted then.
        self._version: int | None = None
        self._any_ban = self._any_unknown = True

    @staticmethod
    def _connect(db_path: pathlib.Path | str) -> sqlite3.Connection:
        conn = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA busy_timeout=10000")
        # WAL with synchronous=NORMAL: a commit is not flushed at once; a power loss may forget the last
        # attempts counted, never corrupt the file. A login is spared two flushes.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def reconfigure(self, auth: AuthConfig, bans: BansConfig) -> None:
        """Start or SIGHUP: thresholds, durations and the exempt list from now on; the bans themselves stay."""
        self.auth = auth
        self.settings = bans
        self._exempt = bans.exempt + (LOOPBACK if auth.exempt_loopback else ())

    # ------------------------------------------------------------------ lookups (event loop, read connection)

    def exempt(self, client_ip: str) -> bool:
        """Never banned, counted or tarpitted: bans.exempt, and loopback with auth.exempt_loopback."""
        if not self._exempt:
            return False
        addr = _ip(client_ip)
        return addr is not None and any(addr in network for network in self._exempt)

    def banned(self, client_ip: str) -> Ban | None:
        """The ban that covers ``client_ip`` now (the longest, when several do), or None."""
        with self._read_lock:
            self._refresh()
            if not self._any_ban:
                return None
        addr = _ip(client_ip)
        if addr is None or any(addr in network for network in self._exempt):
            return None
        with self._read_lock:
            return _covering(self._read_conn, addr, self._clock())

    def is_banned(self, client_ip: str) -> bool:
        return self.banned(client_ip) is not None

    def in_force(self) -> list[Ban]:
        """The bans in force, by address."""
        with self._read_lock:
            rows = self._read_conn.execute(
                f"SELECT {_BAN_COLUMNS} FROM bans WHERE until IS NULL OR until > ? ORDER BY version, first, last",
                (self._clock(),)).fetchall()
        return [Ban(*row) for row in rows]

    def failures(self, client_ip: str) -> int:
        """Wrong passwords from ``client_ip`` in the current window (the count starts afresh with a ban)."""
        with self._read_lock:
            return self._read_conn.execute(
                "SELECT COUNT(*) FROM auth_attempts WHERE ip = ? AND pending = 0 AND at > ?",
                (canonical_ip(client_ip), self._clock() - self.auth.ban_window)).fetchone()[0]

    def unknown_recipients(self, client_ip: str) -> int:
        """Unknown recipients ``client_ip`` tried within the dictionary window."""
        with self._read_lock:
            self._refresh()
            if not self._any_unknown:
                return 0
            return self._read_conn.execute(
                "SELECT COUNT(*) FROM unknown_recipients WHERE ip = ? AND at > ?",
                (canonical_ip(client_ip), self._clock() - self.settings.dictionary.window)).fetchone()[0]

    # ------------------------------------------------------------------ logins (in a thread)

    def reserve_attempt(self, client_ip: str, username: str) -> int | None:
        """Count a login before its password is checked: its id, or None when the client is banned or already
        has ``auth.ban_threshold`` attempts in flight or failed in this window (no password is checked then)."""
        key, now = canonical_ip(client_ip), self._clock()
        with self._lock, write_transaction(self._conn) as conn:
            conn.execute("DELETE FROM auth_attempts WHERE at <= ?", (now - self.auth.ban_window,))
            if self._covering(conn, key, now) is not None:
                return None
            count = conn.execute("SELECT COUNT(*) FROM auth_attempts WHERE ip = ?", (key,)).fetchone()[0]
            if count >= self.auth.ban_threshold:
                return None
            cursor = conn.execute("INSERT INTO auth_attempts (ip, at, pending, user) VALUES (?, ?, 1, ?)",
                                  (key, now, printable(username, 64, ascii_only=True)))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def settle_attempt(self, attempt: int, client_ip: str, success: bool) -> Ban | None:
        """The password check of a reserved attempt is done: a success frees its place, a failure keeps it and
        bans the client at ``auth.ban_threshold`` failures (the ban it starts is returned, and logged here)."""
        key, now = canonical_ip(client_ip), self._clock()
        with self._lock, write_transaction(self._conn) as conn:
            if success:
                conn.execute("DELETE FROM auth_attempts WHERE id = ?", (attempt,))
                return None
            conn.execute("UPDATE auth_attempts SET pending = 0 WHERE id = ?", (attempt,))
            rows = conn.execute("SELECT user FROM auth_attempts WHERE ip = ? AND pending = 0 AND at > ?",
                                (key, now - self.auth.ban_window)).fetchall()
            if len(rows) < self.auth.ban_threshold or self._covering(conn, key, now) is not None:
                return None
            users = sorted({user for (user,) in rows})
            shown = ", ".join(repr(user) for user in users[:3]) + (", ..." if len(users) > 3 else "")
            evidence = f"{len(rows)} failed logins within {span(self.auth.ban_window)} (users {shown})"
            ban = self._ban(conn, str(ipaddress.ip_network(key)), LOGIN_FAILURES, evidence,
                            self.auth.ban_duration, now)
            conn.execute("DELETE FROM auth_attempts WHERE ip = ?", (key,))
        log.warning("banning %s for %ds after %d authentication failures within %ds (ban %d of it within %s)",
                    key, _length(ban), len(rows), self.auth.ban_window, ban.offence, span(self.settings.memory))
        return ban

    # ------------------------------------------------------------------ unknown recipients (in a thread)

    def record_unknown_recipient(self, client_ip: str, address: str) -> tuple[int, Ban | None]:
        """One more unknown recipient from ``client_ip``: how many it tried within the window, and the ban that
        starts at ``dictionary.ban_after`` of them (logged here)."""
        key, now = canonical_ip(client_ip), self._clock()
        settings = self.settings.dictionary
        with self._lock, write_transaction(self._conn) as conn:
            conn.execute("DELETE FROM unknown_recipients WHERE at <= ?", (now - settings.window,))
            conn.execute("INSERT INTO unknown_recipients (ip, at, address) VALUES (?, ?, ?)",
                         (key, now, printable(address, 100, ascii_only=True)))
            rows = conn.execute("SELECT address FROM unknown_recipients WHERE ip = ? ORDER BY at DESC",
                                (key,)).fetchall()
            if len(rows) < settings.ban_after or self._covering(conn, key, now) is not None:
                return len(rows), None
            sample = ", ".join(f"<{address}>" for (address,) in rows[:3])
            evidence = f"{len(rows)} unknown recipients within {span(settings.window)} (last {sample})"
            ban = self._ban(conn, str(ipaddress.ip_network(key)), DICTIONARY_ATTACK, evidence,
                            settings.ban_duration, now)
            conn.execute("DELETE FROM unknown_recipients WHERE ip = ?", (key,))
        log.warning("banning %s for %ds: dictionary attack, %s (ban %d of it within %s)",
                    key, _length(ban), evidence, ban.offence, span(self.settings.memory))
        return len(rows), ban

    # ------------------------------------------------------------------ the administrator's bans

    def add(self, network: Network, duration: float | None, reason: str) -> Ban:
        """``mailfleet ban add``: ban ``network`` for ``duration`` seconds (None: until lifted); it replaces any
        ban of exactly that network. An exempt address cannot be banned: the ban would have no effect."""
        if any(_within(network, exempt) for exempt in self._exempt):
            raise BanError(f"{_shown(network)} is exempt from bans (bans.exempt or auth.exempt_loopback)")
        now = self._clock()
        ban = Ban(str(network), now, None if duration is None else now + duration, reason, "added by hand",
                  "admin", 1)
        with self._lock, write_transaction(self._conn) as conn:
            self._write(conn, ban)
        log.info("banning %s %s by hand: %s", ban.address,
                 "until lifted" if duration is None else f"for {span(duration)}", reason)
        return ban

    def remove(self, network: Network) -> Ban | None:
        """``mailfleet ban del``: lift the ban of exactly ``network`` and forget its counts and its history, so
        that its next ban, if any, is a first one. The ban lifted, or None when there was none."""
        key = str(network)
        now = self._clock()
        with self._lock, write_transaction(self._conn) as conn:
            row = conn.execute(f"SELECT {_BAN_COLUMNS} FROM bans WHERE network = ? AND (until IS NULL OR until > ?)",
                               (key, now)).fetchone()
            conn.execute("DELETE FROM bans WHERE network = ?", (key,))
            conn.execute("DELETE FROM offenders WHERE network = ?", (key,))
            if network.num_addresses == 1:
                ip = str(network.network_address)
                conn.execute("DELETE FROM auth_attempts WHERE ip = ?", (ip,))
                conn.execute("DELETE FROM unknown_recipients WHERE ip = ?", (ip,))
        if row is not None:
            log.info("ban of %s lifted by hand", _shown(network))
        return Ban(*row) if row is not None else None

    def covering(self, network: Network) -> list[Ban]:
        """The bans in force whose network holds all of ``network`` (for the message when `del` finds none of
        exactly that network)."""
        first, last = _key(network.network_address), _key(network.broadcast_address)
        with self._read_lock:
            rows = self._read_conn.execute(
                f"SELECT {_BAN_COLUMNS} FROM bans WHERE version = ? AND first <= ? AND last >= ? "
                "AND (until IS NULL OR until > ?)", (network.version, first, last, self._clock())).fetchall()
        return [Ban(*row) for row in rows]

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._conn.close()
            self._read_conn.close()

    def _refresh(self) -> None:
        """Under the read lock: whether the store holds any ban in force and any unknown recipient, learnt again
        only when the file changed. SQLite's data_version changes when another connection (this store's writer,
        another process, `mailfleet ban`) commits; time alone can only end bans and windows, never start them.
        So a host with no bans and no dictionary suspects, the common case, answers every connection with this
        one pragma instead of two indexed queries."""
        version = self._read_conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        self._version = version
        self._any_ban = self._read_conn.execute(
            "SELECT EXISTS (SELECT 1 FROM bans WHERE until IS NULL OR until > ?)", (self._clock(),)).fetchone()[0]
        self._any_unknown = self._read_conn.execute("SELECT EXISTS (SELECT 1 FROM unknown_recipients)").fetchone()[0]

    # ------------------------------------------------------------------ inside a write transaction

    def _covering(self, conn: sqlite3.Connection, key: str, now: float) -> Ban | None:
        addr = _ip(key)
        return None if addr is None else _covering(conn, addr, now)

    def _ban(self, conn: sqlite3.Connection, network: str, reason: str, evidence: str, base: float,
             now: float) -> Ban:
        """An automatic ban, escalated for a repeat offender: base x escalation^(n-1) for its n-th ban within
        bans.memory, up to bans.max_duration (never below base)."""
        settings = self.settings
        conn.execute("DELETE FROM offenders WHERE last_until <= ?", (now - settings.memory,))
        conn.execute("DELETE FROM bans WHERE until <= ?", (now,))
        row = conn.execute("SELECT bans FROM offenders WHERE network = ?", (network,)).fetchone()
        offence = row[0] + 1 if row is not None else 1
        duration = min(base * settings.escalation ** (offence - 1), max(settings.max_duration, base))
        ban = Ban(network, now, now + duration, reason, evidence, "auto", offence)
        conn.execute("INSERT OR REPLACE INTO offenders (network, bans, last_until) VALUES (?, ?, ?)",
                     (network, offence, ban.until))
        self._write(conn, ban)
        return ban

    @staticmethod
    def _write(conn: sqlite3.Connection, ban: Ban) -> None:
        network = ipaddress.ip_network(ban.network)
        conn.execute(f"INSERT OR REPLACE INTO bans ({_BAN_COLUMNS}, version, first, last) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (ban.network, ban.since, ban.until, ban.reason, ban.evidence, ban.source, ban.offence,
                      network.version, _key(network.network_address), _key(network.broadcast_address)))


def _within(inner: Network, outer: Network) -> bool:
    return inner.version == outer.version and _key(outer.network_address) <= _key(inner.network_address) \
        and _key(inner.broadcast_address) <= _key(outer.broadcast_address)


def _length(ban: Ban) -> float:
    return 0.0 if ban.until is None else ban.until - ban.since


def _shown(network: Network) -> str:
    return str(network.network_address) if network.num_addresses == 1 else str(network)
