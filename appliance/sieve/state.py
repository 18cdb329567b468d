"""What Sieve remembers between deliveries, in one SQLite file per host (``<data_dir>/sieve/state.sqlite``).

- ``vacation``: when a user's vacation last answered a sender, per handle (RFC 5230 §4.2: at most one reply per
  sender and period).
- ``done``: the actions already carried out for one recipient of one queued message. A delivery that failed
  half-way (a full folder, a crash) is retried by the queue; the retry skips what is recorded here, so that a
  redirect or a vacation reply is not sent twice and a folder does not get a second copy. Each action is
  recorded right after its own durable commit (the store's fsync, the spool's): a crash in that window repeats
  that one action on the retry (at least once, never lost). Rows older than ``KEEP_DONE`` go.

WAL mode and a busy timeout: the queue process and the SMTP acceptors (delivery before the 250) share the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

KEEP_DONE = 14 * 86400.0  # longer than any message stays in the queue
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vacation (user TEXT, sender TEXT, handle TEXT, sent REAL,
                                     PRIMARY KEY (user, sender, handle));
CREATE TABLE IF NOT EXISTS done (queue_id TEXT, rcpt TEXT, action TEXT, at REAL,
                                 PRIMARY KEY (queue_id, rcpt, action));
"""


class SieveState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("DELETE FROM done WHERE at < ?", (time.time() - KEEP_DONE,))

    def done(self, queue_id: str, rcpt: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT action FROM done WHERE queue_id = ? AND rcpt = ?",
                                    (queue_id, rcpt.lower())).fetchall()
        return {r[0] for r in rows}

    def record(self, queue_id: str, rcpt: str, action: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?)",
                             (queue_id, rcpt.lower(), action, time.time()))

    def vacation_due(self, user: str, sender: str, handle: str, period: float, now: float) -> bool:
        """Whether ``user`` may answer ``sender`` now; if so the reply is recorded as sent (claim first: two
        deliveries at once answer once)."""
        key = (user.lower(), sender.lower(), handle)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT sent FROM vacation WHERE user = ? AND sender = ? AND handle = ?",
                                       key).fetchone()
                if row is not None and now - row[0] < period:
                    return False
                self._db.execute("INSERT OR REPLACE INTO vacation VALUES (?, ?, ?, ?)", (*key, now))
                return True
            finally:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
