"""What every SQLite database of the appliance (mailbox indexes, the user directory, login-failure state) needs
when it is opened by several processes at once: WAL, and transactions that begin, commit and roll back in one
place.

The connections are opened with ``isolation_level=None`` (the sqlite3 module starts no transaction of its own),
so a transaction is exactly what these context managers begin and end.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager


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


@contextmanager
def read_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every statement inside sees the same committed state (in WAL, a snapshot that no
    writer blocks). It only reads, so it ends with COMMIT whatever happens inside."""
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE takes SQLite's write lock at once (waiting up to the connection's
    busy timeout), so a read-then-write inside cannot race another writer, in this process or another; COMMIT
    when the block ends, ROLLBACK when it raises. Callers that share the connection between threads hold
    their own thread lock around it (a connection carries one transaction at a time)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
