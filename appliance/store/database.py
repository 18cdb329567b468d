"""One account's SQLite index and the locks around it: the write and read transactions every part of
``Account`` uses, and the row operations its parts share (folder rows, meta counters, UID and MODSEQ
allocation, removing and moving messages, quota, change notification).

A write transaction takes, in this order, the account's thread lock, a cross-process flock on ``write.lock``
and SQLite's write lock (durable.sqlite.write_transaction); see ``AccountDatabase._write``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.durable import files as durable_files
from appliance.durable.sqlite import enable_wal, read_transaction, write_transaction
from appliance.store import maildir
from appliance.store.errors import FolderNotFound, MailboxLocked, QuotaExceeded

log = logging.getLogger("appliance.store")

DELIMITER = "/"


def canonical_folder(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1); every other name is kept as given."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX" + DELIMITER):
        return "INBOX" + name[5:]
    return name


class Busy(Exception):
    """The write lock is held elsewhere and the caller asked not to wait."""


class AccountDatabase:
    """The index of one account (``mailfleet.sqlite`` in its directory) with its locks; the parts of
    ``Account`` (folders, messages, staging, recovery) are built on it."""

    def __init__(self, address: str, path: Path) -> None:
        self.address = address
        self.path = path
        self._root = str(path) + os.sep
        self._lock = threading.RLock()
        self._lock_fd: int | None = None  # write.lock, see _write
        self._flushed = 0  # ``unflushed`` ids up to this one are on disk (a flush ran after their commit)
        self._listeners: list[Callable[[str], None]] = []
        self._listeners_lock = threading.Lock()  # not self._lock: notifying must not wait for a long read
        maildir.make_maildir(path)
        self._db = sqlite3.connect(
            path / "mailfleet.sqlite", isolation_level=None, check_same_thread=False, timeout=60
        )
        enable_wal(self._db)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=60000")

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _write(self, synced: bool = True, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: thread lock, then a cross-process lock, then SQLite's write lock.

        ``synced=False`` commits without flushing the WAL (SQLite's synchronous=NORMAL): the caller makes the
        transaction durable itself, after the locks are released (see ``Staging.deliver_batch``).

        The flock on ``write.lock`` queues writers of other processes (the SMTP acceptors delivering, the IMAP
        and POP3 sessions) in the kernel, which wakes the next one the moment the lock is free. Left to SQLite
        alone, a writer that finds the database locked sleeps 1, 2, 5, 10... ms before it looks again, and two
        processes delivering to one mailbox spent much of their time asleep.
        """
        if not self._lock.acquire(blocking=wait):
            raise Busy
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.path / "write.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy from None
            try:
                if not synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                with write_transaction(self._db) as db:  # its COMMIT is the durability point (when synced)
                    yield db
            finally:
                if not synced:
                    self._db.execute("PRAGMA synchronous=FULL")
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for multi-statement reads."""
        with self._lock, read_transaction(self._db) as db:
            yield db

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # ------------------------------------------------------------------ change notification

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(folder_name)`` (from any thread) after each committed change in this process.

        Returns the function that removes the subscription. Changes made by other processes are
        not signalled; sessions see them by polling ``folder_state`` (at each command, and
        periodically while idle).
        """
        with self._listeners_lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._listeners_lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return unsubscribe

    def announce(self, folder: str) -> None:
        """Signal subscribers that ``folder`` changed (in another process: they re-read it)."""
        self._notify(folder)

    def _notify(self, *folders: str) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for folder in dict.fromkeys(folders):
            for callback in listeners:
                try:
                    callback(folder)
                except Exception:
                    log.exception("store change listener failed")

    # ------------------------------------------------------------------ rows every part uses

    def _folder_row(self, name: str) -> tuple | None:
        return self._db.execute(
            "SELECT id, name, dirname, uidvalidity, uidnext, highestmodseq, special_use, subscribed"
            " FROM folders WHERE name = ?",
            (canonical_folder(name),),
        ).fetchone()

    def _require_folder(self, name: str) -> tuple:
        row = self._folder_row(name)
        if row is None:
            raise FolderNotFound(f"no folder {name!r}")
        return row

    def _folder_dir(self, dirname: str) -> Path:
        return self.path / dirname if dirname else self.path

    def _meta(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _allocate(self, folder_id: int, count: int = 1) -> tuple[int, int]:
        """Reserve ``count`` UIDs and one MODSEQ in the open write transaction."""
        uidnext, modseq = self._db.execute(
            "SELECT uidnext, highestmodseq FROM folders WHERE id = ?", (folder_id,)
        ).fetchone()
        self._db.execute(
            "UPDATE folders SET uidnext = ?, highestmodseq = ? WHERE id = ?",
            (uidnext + count, modseq + 1, folder_id),
        )
        return uidnext, modseq + 1

    def _bump_modseq(self, folder_id: int) -> int:
        self._db.execute("UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE id = ?", (folder_id,))
        return self._db.execute("SELECT highestmodseq FROM folders WHERE id = ?", (folder_id,)).fetchone()[0]

    def _remove_locked(self, folder_id: int, rows: list[tuple]) -> None:
        """Drop messages (rows of (uid, filename, size)) in the open write transaction: recorded as expunged
        for QRESYNC and their files listed in ``pending_unlink``, so a crash before ``_unlink`` cannot
        resurrect them."""
        modseq = self._bump_modseq(folder_id)
        db = self._db
        db.executemany("DELETE FROM messages WHERE folder_id = ? AND uid = ?", [(folder_id, r[0]) for r in rows])
        db.executemany(
            "INSERT OR REPLACE INTO expunged(folder_id, uid, modseq) VALUES(?, ?, ?)",
            [(folder_id, r[0], modseq) for r in rows],
        )
        db.executemany("INSERT OR IGNORE INTO pending_unlink VALUES(?)", [(r[1],) for r in rows])
        self._set_meta("used", self._meta("used") - sum(r[2] for r in rows))

    def _unlink(self, files: list[str]) -> None:
        """Remove files whose rows are gone (after COMMIT), then forget them."""
        dirs = set()
        for rel in files:
            path = self.path / rel
            path.unlink(missing_ok=True)
            dirs.add(path.parent)
        for directory in dirs:
            with contextlib.suppress(OSError):
                durable_files.fsync_dir(directory)
        with self._write() as db:
            db.executemany("DELETE FROM pending_unlink WHERE filename = ?", [(f,) for f in files])

    def _select_uids(self, folder_id: int, uids: list[int]) -> list[tuple]:
        rows: list[tuple] = []
        for chunk in chunks(uids, 500):
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(
                "SELECT uid, filename, flags, internal_date, tz_offset, size FROM messages"
                f" WHERE folder_id = ? AND uid IN ({marks}) ORDER BY uid",
                (folder_id, *chunk),
            ).fetchall()
        rows.sort()
        return rows

    def _move_locked(self, src: tuple, uids: list[int], dst: tuple) -> list[tuple[int, int]]:
        """Move messages to another folder in the open write transaction: the rows change folder and UID,
        the files stay put (MOVE, and the RENAME of INBOX)."""
        rows = self._select_uids(src[0], uids)
        if not rows:
            return []
        first_uid, modseq = self._allocate(dst[0], len(rows))
        src_modseq = self._bump_modseq(src[0])
        pairs = []
        for offset, r in enumerate(rows):
            new_uid = first_uid + offset
            self._db.execute(
                "UPDATE messages SET folder_id = ?, uid = ?, modseq = ?, recent = 1"
                " WHERE folder_id = ? AND uid = ?",
                (dst[0], new_uid, modseq, src[0], r[0]),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO expunged(folder_id, uid, modseq) VALUES(?, ?, ?)",
                (src[0], r[0], src_modseq),
            )
            pairs.append((r[0], new_uid))
        return pairs

    # ------------------------------------------------------------------ quota

    def set_quota(self, quota_bytes: int) -> None:
        if quota_bytes < 0:
            raise ValueError("quota must be >= 0 (0 = unlimited)")
        with self._write():
            self._set_meta("quota", quota_bytes)

    def quota(self) -> tuple[int, int]:
        """(bytes used, quota in bytes; 0 = unlimited)."""
        with self._lock:
            return self._meta("used"), self._meta("quota")

    def _check_quota(self, size: int) -> None:
        quota = self._meta("quota")
        if quota:
            used = self._meta("used")
            if used + size > quota:
                raise QuotaExceeded(self.address, used, quota, size)

    # ------------------------------------------------------------------ locks

    @contextlib.contextmanager
    def exclusive_lock(self, name: str = "pop3") -> Iterator[None]:
        """A non-blocking, cross-process lock on this account (flock on ``<name>.lock``).

        POP3 uses it as the maildrop lock (RFC 1939 §8); raises MailboxLocked when already held,
        also by another session of the same process.
        """
        fd = os.open(self.path / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MailboxLocked(f"{self.address}: mailbox is locked by another {name} session") from None
            yield
        finally:
            os.close(fd)


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    """``items`` in slices of ``size``: SQLite limits the parameters of one statement."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
