"""Greylisting's state: the triplets and the client networks' passes, in SQLite under data_dir (WAL), shared by
every acceptor process and kept across restarts.

A RCPT costs one statement on the reading connection (two primary-key probes, the triplet and its network); WAL
readers never wait for a writer, so it runs on the event loop. Writes happen only when something changes (a
first attempt, a pass, a last-seen time a day old) and go through their own connection, which the caller runs on
a thread: a write may wait for another process's lock. Every write is a single-row upsert whose outcome does not
depend on what this process read, so two acceptors racing on one triplet or network cannot double-count.

Rows expire (a triplet not passed within the retry window, anything not seen for the lifetime) in batches of
PURGE_BATCH, at most once every PURGE_EVERY seconds per process, inside a write that happens anyway (a first
attempt, a pass, a refresh: a host that receives mail makes some every day), so no write waits on a large delete
and a read never becomes a write.

``synchronous=NORMAL``: a commit survives a crash or kill of the process; a power loss may lose the last ones,
which costs a sender one more greylisting, never a message.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from appliance.config.model import GreylistConfig
from appliance.durable.sqlite import enable_wal, write_transaction
from appliance.screening.greylist_triplet import Change, NetworkRow, TripletRow, Write

PURGE_EVERY = 3600.0
PURGE_BATCH = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    key TEXT PRIMARY KEY,      -- network/sender/recipient (greylist_triplet.triplet_key)
    first REAL NOT NULL,       -- first seen: the greylisting started
    seen REAL NOT NULL,        -- last seen (first, until it passed)
    passed INTEGER NOT NULL    -- 1 once a retry came after the delay
);
CREATE INDEX IF NOT EXISTS triplets_expiry ON triplets (passed, seen);
CREATE TABLE IF NOT EXISTS networks (
    network TEXT PRIMARY KEY,  -- 192.0.2.0/24, 2001:db8::/64
    passes INTEGER NOT NULL,   -- triplets passed (at most one per auto_allow_interval)
    counted REAL NOT NULL,     -- when the last pass was counted
    seen REAL NOT NULL         -- last seen
);
CREATE INDEX IF NOT EXISTS networks_expiry ON networks (seen);
"""


class GreylistStateError(Exception):
    """The state cannot be read or written (locked, corrupt, unwritable); str() is one line for the log."""


class GreylistStore:
    """The state in ``path``. Connections are opened at first use and again after an error, so a file that was
    broken and replaced, or a directory made writable, is used again without a restart."""

    def __init__(self, path: Path, busy_timeout: float = 1.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._read_lock, self._write_lock = threading.Lock(), threading.Lock()
        self._next_purge = 0.0

    # ------------------------------------------------------------------ reading (on the event loop)

    def read(self, network: str, keys: Iterable[str]) -> tuple[NetworkRow | None, dict[str, TripletRow]]:
        """The network's row and the rows of those triplet keys that exist: one statement."""
        keys = list(keys)
        query = ("SELECT 0, network, passes, seen, 0 FROM networks WHERE network = ? UNION ALL "
                 f"SELECT 1, key, first, seen, passed FROM triplets WHERE key IN ({', '.join('?' * len(keys))})")
        with self._read_lock:
            try:
                db = self._reader = self._reader or self._open()
                rows = db.execute(query, (network, *keys)).fetchall()
            except (sqlite3.Error, OSError) as exc:
                _close(self._reader)
                self._reader = None
                raise self._error(exc) from None
        net = None
        triplets = {}
        for table, name, a, seen, passed in rows:
            if table == 0:
                net = NetworkRow(int(a), float(seen))
            else:
                triplets[name] = TripletRow(float(a), float(seen), bool(passed))
        return net, triplets

    # ------------------------------------------------------------------ writing (on a thread)

    def apply(self, changes: Iterable[Change], now: float, config: GreylistConfig) -> int | None:
        """Make the changes in one transaction (and a purge batch when one is due). Returns the network's pass
        count when a COUNT_PASS counted, else None."""
        counted = None
        with self._write_lock:
            try:
                db = self._writer = self._writer or self._open()
                with write_transaction(db):
                    for change in changes:
                        counted = _write(db, change, now, config) or counted
                    if now >= self._next_purge:
                        self._purge(db, now, config)
            except (sqlite3.Error, OSError) as exc:
                _close(self._writer)
                self._writer = None
                raise self._error(exc) from None
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY
        return counted

    def _purge(self, db: sqlite3.Connection, now: float, config: GreylistConfig) -> None:
        for table, where, args in (
                ("triplets", "passed = 0 AND seen < ?", (now - config.retry_window,)),
                ("triplets", "passed = 1 AND seen < ?", (now - config.lifetime,)),
                ("networks", "seen < ?", (now - config.lifetime,))):
            db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {where} LIMIT ?)",
                       (*args, PURGE_BATCH))

    def count(self) -> tuple[int, int]:
        """(triplets, networks) stored: for tests and the operator."""
        with self._read_lock:
            db = self._reader = self._reader or self._open()
            return (db.execute("SELECT COUNT(*) FROM triplets").fetchone()[0],
                    db.execute("SELECT COUNT(*) FROM networks").fetchone()[0])

    # ------------------------------------------------------------------ connections

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=self._busy_timeout)
        try:
            enable_wal(db, patience=self._busy_timeout)
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _error(self, exc: BaseException) -> GreylistStateError:
        return GreylistStateError(f"{self.path}: {exc.__class__.__name__}: {exc}")

    def close(self) -> None:
        with self._read_lock, self._write_lock:
            _close(self._reader)
            _close(self._writer)
            self._reader = self._writer = None


def _close(db: sqlite3.Connection | None) -> None:
    if db is not None:
        try:
            db.close()
        except sqlite3.Error:
            pass  # a connection to a broken file: nothing left to release


def _write(db: sqlite3.Connection, change: Change, now: float, config: GreylistConfig) -> int | None:
    key = change.key
    match change.write:
        case Write.FIRST_SEEN:
            db.execute("INSERT INTO triplets (key, first, seen, passed) VALUES (?, ?, ?, 0) ON CONFLICT (key) DO "
                       "UPDATE SET first = excluded.first, seen = excluded.seen, passed = 0", (key, now, now))
        case Write.PASSED:
            db.execute("UPDATE triplets SET passed = 1, seen = ? WHERE key = ?", (now, key))
        case Write.REFRESH:
            db.execute("UPDATE triplets SET seen = ? WHERE key = ?", (now, key))
        case Write.REFRESH_NETWORK:
            db.execute("UPDATE networks SET seen = ? WHERE network = ?", (now, key))
        case Write.COUNT_PASS:
            # One pass per auto_allow_interval counts (postgrey: one an hour), so that one burst of mail does not
            # auto-allow a network; a network not seen for the lifetime starts again from one.
            row = db.execute(
                "INSERT INTO networks (network, passes, counted, seen) VALUES (?, 1, ?, ?) ON CONFLICT (network) "
                "DO UPDATE SET passes = CASE WHEN networks.seen < ? THEN 1 ELSE networks.passes + 1 END, "
                "counted = excluded.counted, seen = excluded.seen "
                "WHERE networks.counted <= ? OR networks.seen < ? RETURNING passes",
                (key, now, now, now - config.lifetime, now - config.auto_allow_interval,
                 now - config.lifetime)).fetchone()
            return int(row[0]) if row is not None else None
    return None
