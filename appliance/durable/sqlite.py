"""What every SQLite database of the appliance (mailbox indexes, the user directory, login-failure state) needs
when it is opened by several processes at once."""

from __future__ import annotations

import sqlite3
import time


def enable_wal(db: sqlite3.Connection, patience: float = 60.0) -> None:
    """Switch a database to WAL. Switching a new file needs a moment alone with it, and SQLite reports "database
    is locked" at once, without its busy handler, when another process opens the same new file at that moment
    (two SMTP acceptors delivering a new user's first messages): wait for our turn."""
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
