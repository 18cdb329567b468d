"""The egress state store: which sending addresses are suspended, since when, why, on what evidence.

One SQLite file (``data_dir/egress.sqlite``) that the queue process and the ``mailfleet egress`` command both
open, so that a suspension survives a restart and an administrator's suspend or resume takes effect at the
service's next connection, with no signal: the service asks SQLite's ``data_version`` (one pragma) before it
picks an address and reads the rows again only when another connection committed, as auth/bans.py does.

- ``addresses``: one row per address whose state was ever changed: ``healthy`` or ``suspended``, since when,
  why (``dnsbl``, ``rejections``, ``not local``, ``admin``), the evidence (the listing, the replies, the bind
  error, the administrator's reason), who did it (``auto`` or ``admin``) and, for an automatic suspension, since
  when the re-checks have found it clear (the hysteresis of ``failover.clear_for``). An address without a row
  is healthy.
- ``returns``: when an address came back by itself, for ``failover.max_changes_per_day``.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
from dataclasses import dataclass

from appliance.config import Config
from appliance.durable.sqlite import enable_wal, write_transaction

HEALTHY = "healthy"
SUSPENDED = "suspended"
AUTO = "auto"
ADMIN = "admin"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS addresses (
    address TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL, why TEXT NOT NULL,
    evidence TEXT NOT NULL, source TEXT NOT NULL, clear_since REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS returns (address TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS returns_address ON returns (address, at);
"""
_COLUMNS = "address, state, since, why, evidence, source, clear_since"


def store_path(config: Config) -> pathlib.Path:
    """Where the service and ``mailfleet egress`` find the state of this host's sending addresses."""
    return config.data_dir / "egress.sqlite"


@dataclass(frozen=True)
class AddressState:
    address: str
    state: str  # HEALTHY or SUSPENDED
    since: float | None  # None: never changed
    why: str = ""
    evidence: str = ""
    source: str = AUTO  # AUTO (the service) or ADMIN (mailfleet egress suspend/resume)
    clear_since: float | None = None  # a suspended address found clear by every re-check since then

    @property
    def suspended(self) -> bool:
        return self.state == SUSPENDED

    def as_dict(self) -> dict[str, object]:
        return {"address": self.address, "state": self.state, "since": self.since, "why": self.why,
                "evidence": self.evidence, "source": self.source}


def healthy(address: str) -> AddressState:
    return AddressState(address, HEALTHY, None)


class EgressStore:
    """The suspensions, in one SQLite file shared by the queue process and the CLI."""

    def __init__(self, db_path: pathlib.Path | str) -> None:
        self.path = pathlib.Path(db_path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False, timeout=10.0)
        self._conn.execute("PRAGMA busy_timeout=10000")
        enable_wal(self._conn)
        self._conn.executescript(_SCHEMA)
        self._version: int | None = None

    def close(self) -> None:
        self._conn.close()

    def changed(self) -> bool:
        """True when the file changed since the last call (a commit of this store, another process, the CLI)."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return False
        self._version = version
        return True

    def states(self) -> dict[str, AddressState]:
        """Every address with a row; an address missing here is healthy."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM addresses").fetchall()
        return {row[0]: AddressState(*row) for row in rows}

    def state(self, address: str) -> AddressState:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM addresses WHERE address = ?", (address,)).fetchone()
        return AddressState(*row) if row is not None else healthy(address)

    def suspend(self, address: str, why: str, evidence: str, source: str, now: float) -> AddressState | None:
        """Suspend `address`; None when it already was (an administrator's suspension is never replaced by the
        service's, and the service's is replaced by an administrator's)."""
        with self._lock, write_transaction(self._conn) as db:
            row = db.execute("SELECT state, source FROM addresses WHERE address = ?", (address,)).fetchone()
            if row is not None and row[0] == SUSPENDED and (row[1] == ADMIN or source == AUTO):
                return None
            state = AddressState(address, SUSPENDED, now, why, evidence, source)
            db.execute(f"INSERT OR REPLACE INTO addresses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                       (address, SUSPENDED, now, why, evidence, source))
        return state

    def resume(self, address: str, evidence: str, source: str, now: float) -> AddressState | None:
        """Make `address` healthy; None when it was not suspended. A return by itself is counted."""
        with self._lock, write_transaction(self._conn) as db:
            row = db.execute("SELECT state FROM addresses WHERE address = ?", (address,)).fetchone()
            if row is None or row[0] != SUSPENDED:
                return None
            why = "resumed by the administrator" if source == ADMIN else "clear"
            state = AddressState(address, HEALTHY, now, why, evidence, source)
            db.execute(f"INSERT OR REPLACE INTO addresses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                       (address, HEALTHY, now, why, evidence, source))
            if source == AUTO:
                db.execute("INSERT INTO returns (address, at) VALUES (?, ?)", (address, now))
                db.execute("DELETE FROM returns WHERE at < ?", (now - 2 * 86400,))
        return state

    def set_clear_since(self, address: str, moment: float | None) -> None:
        """Start (a time) or break (None) the clear streak of an automatic suspension."""
        with self._lock, write_transaction(self._conn) as db:
            db.execute("UPDATE addresses SET clear_since = ? WHERE address = ? AND state = ? AND source = ?",
                       (moment, address, SUSPENDED, AUTO))

    def returns_since(self, address: str, moment: float) -> int:
        """How many times `address` came back by itself since `moment`."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM returns WHERE address = ? AND at >= ?",
                                          (address, moment)).fetchone()[0])
