"""The audit log: every change made through the console or the API, who made it, from where, when
(data_dir/web/audit.sqlite). Reads are not logged; failed logins are in the service log and the ban store."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.durable.sqlite import enable_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    client TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
"""


@dataclass(frozen=True)
class Entry:
    at: float
    actor: str  # the user's address, or "token:<name>"
    client: str  # the client's IP address
    action: str  # e.g. "user.add", "queue.flush"
    target: str  # what it changed, e.g. the address or the queue ID
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "actor": self.actor, "client": self.client, "action": self.action,
                "target": self.target, "detail": self.detail}


def store_path(data_dir: Path) -> Path:
    return data_dir / "web" / "audit.sqlite"


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        enable_wal(self._conn)
        self._conn.execute("PRAGMA synchronous=FULL")  # an entry is on disk before the change is answered
        self._conn.executescript(_SCHEMA)

    def record(self, actor: str, client: str, action: str, target: str, detail: str = "") -> None:
        with self._lock:
            self._conn.execute("INSERT INTO audit (at, actor, client, action, target, detail) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                               (time.time(), actor, client, action, target[:500], detail[:2000]))

    def recent(self, limit: int = 200, offset: int = 0) -> list[Entry]:
        with self._lock:
            rows = self._conn.execute("SELECT at, actor, client, action, target, detail FROM audit "
                                      "ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [Entry(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
