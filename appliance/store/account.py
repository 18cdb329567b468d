"""One user's mail: Maildir files plus SQLite (WAL) metadata, safe across threads and processes.

Durability rule (every mutation): files first (a delivery's as an unnamed file, see maildir.write_staged;
other writes' in tmp/), then, inside one SQLite write transaction (BEGIN IMMEDIATE under a cross-process
flock, which serialises other processes), the link or rename into cur/ and the metadata. Most mutations flush
the files before and commit with SQLite's synchronous=FULL: COMMIT is the durability point. Deliveries instead
make files, links and rows durable with one filesystem flush after an unflushed commit, outside the lock, so
that writers in several processes do not queue behind each other's flushes; they report "stored" only after
that flush. Until then, the delivery's rows are also listed in ``unflushed`` (same transaction): a power loss
before the flush can leave such a row with a file that is short, empty, absent (a link that did not reach the
disk) or still in tmp/, and the next open checks exactly those rows (size on disk against the row) and drops
the ones whose file did not make it, as expunged: nobody was told they were stored.

Because the link or rename happens while the write lock is held, the open-time recovery (which takes the same
lock) never sees a file "in flight": a file in cur/ without a row is an orphan of a crash and is re-added under
a new UID (UIDNEXT only moves forward in committed transactions, so no UID is ever reused) unless its size is
not the one its name records (``,S=``: a delivery cut short, moved back to tmp/); a row whose file is still
in tmp/ (a crash after a delivery's commit, before its flush) gets its file moved into place when the file is
complete. Expunged files are listed in ``pending_unlink`` in the same transaction that drops their rows, so a
crash before the unlink cannot resurrect them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from appliance.durable import files as durable_files
from appliance.durable.sqlite import enable_wal
from appliance.store import maildir
from appliance.store.errors import (
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    MailboxLocked,
    MessageNotFound,
    QuotaExceeded,
)

log = logging.getLogger("appliance.store")

DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
)
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})
DELIMITER = "/"
TMP_MAX_AGE = 3600  # seconds: tmp/ files older than this at open are leftovers of a crash

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS folders(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dirname TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    special_use TEXT,
    subscribed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages(
    folder_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    filename TEXT NOT NULL UNIQUE,
    flags TEXT NOT NULL DEFAULT '',
    internal_date INTEGER NOT NULL,
    tz_offset INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    recent INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY(folder_id, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_modseq ON messages(folder_id, modseq);
CREATE TABLE IF NOT EXISTS expunged(
    folder_id INTEGER NOT NULL, uid INTEGER NOT NULL, modseq INTEGER NOT NULL,
    PRIMARY KEY(folder_id, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_unlink(filename TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS unflushed(id INTEGER PRIMARY KEY AUTOINCREMENT, filename TEXT NOT NULL,
    size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions(name TEXT PRIMARY KEY);
"""


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Metadata of one stored message; ``path`` (``file`` as a string) holds its exact bytes."""

    uid: int
    flags: frozenset[str]
    timestamp: int  # INTERNALDATE as Unix time, with the zone it was given in (seconds east of UTC)
    tz_offset: int
    size: int
    modseq: int
    file: str

    @property
    def internal_date(self) -> datetime:
        zone = _ZONES.get(self.tz_offset)
        if zone is None:
            zone = _ZONES.setdefault(self.tz_offset, timezone(timedelta(seconds=self.tz_offset)))
        return datetime.fromtimestamp(self.timestamp, zone)

    @property
    def path(self) -> Path:
        """Built on demand: listing 10,000 messages should not build 10,000 Path objects."""
        return Path(self.file)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for ``Account.deliver_batch``."""

    folder: str
    data: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None


@dataclass(slots=True)
class StagedBatch:
    """Deliveries between the steps of ``Account.deliver_batch``: per item its result so far (None while
    pending), the folder rows, the files written (not yet named in their folder) and the items indexed with
    their (UIDVALIDITY, UID)."""

    items: Sequence[Delivery]
    results: list
    rows: dict[int, tuple] = field(default_factory=dict)
    written: dict[int, maildir.StagedFile] = field(default_factory=dict)
    indexed: list[tuple[int, tuple[int, int]]] = field(default_factory=list)
    unflushed: int = 0  # the highest ``unflushed`` id of this batch's rows


class _Busy(Exception):
    """The write lock is held elsewhere and the caller asked not to wait."""


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """A folder as LIST/STATUS/SELECT see it."""

    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """Counters for STATUS and SELECT (RFC 3501 §6.3.10)."""

    messages: int
    recent: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int


def canonical_folder(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1); every other name is kept as given."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX" + DELIMITER):
        return "INBOX" + name[5:]
    return name


def validate_folder_name(name: str) -> str:
    """Refuse names that cannot be stored safely; return the canonical name."""
    name = canonical_folder(name)
    if not name or name.startswith(DELIMITER) or name.endswith(DELIMITER) or (DELIMITER * 2) in name:
        raise InvalidFolderName(f"invalid folder name {name!r}")
    if any(ord(c) < 0x20 or c in "\x7f*%" for c in name):
        raise InvalidFolderName(f"folder name {name!r} contains a forbidden character")
    if any(part in (".", "..") for part in name.split(DELIMITER)):
        raise InvalidFolderName(f"folder name {name!r} has a '.' or '..' level")
    if len(name.encode()) > 200:
        raise InvalidFolderName("folder name too long")
    return name


_ZONES: dict[int, timezone] = {}


def _encode_flags(flags: Iterable[str]) -> str:
    return " ".join(sorted({f for f in flags if f and f != "\\Recent"}))


def _decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def _normalise_flag(flag: str) -> str:
    """System flags are case-insensitive (RFC 3501 §2.3.2): store them in their canonical case."""
    if flag.startswith("\\"):
        for known in SYSTEM_FLAGS:
            if known.lower() == flag.lower():
                return known
    return flag


class Account:
    """All folders of one address. Obtain it from ``MailStore.account(address)``; it is shared by every
    session of the process and is thread-safe."""

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
        with self._write():
            for statement in _statements():
                self._db.execute(statement)
            for name, special in DEFAULT_FOLDERS:
                if self._folder_row(name) is None:
                    # like Dovecot's "auto = subscribe" for the special-use folders
                    self._create_folder_locked(name, special, subscribed=special is not None)
        self._recover()

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _write(self, synced: bool = True, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: thread lock, then a cross-process lock, then SQLite's write lock.

        ``synced=False`` commits without flushing the WAL (SQLite's synchronous=NORMAL): the caller makes the
        transaction durable itself, after the locks are released (see ``deliver_batch``).

        The flock on ``write.lock`` queues writers of other processes (the SMTP acceptors delivering, the IMAP
        and POP3 sessions) in the kernel, which wakes the next one the moment the lock is free. Left to SQLite
        alone, a writer that finds the database locked sleeps 1, 2, 5, 10... ms before it looks again, and two
        processes delivering to one mailbox spent much of their time asleep.
        """
        if not self._lock.acquire(blocking=wait):
            raise _Busy
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.path / "write.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _Busy from None
            try:
                if not synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")  # the durability point (when synced)
            finally:
                if not synced:
                    self._db.execute("PRAGMA synchronous=FULL")
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for multi-statement reads."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

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

    def _folder_row(self, name: str) -> sqlite3.Row | tuple | None:
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

    def _meta(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _new_uidvalidity(self) -> int:
        """Strictly increasing per account, so a re-created folder never reuses a UIDVALIDITY."""
        value = max(int(time.time()), self._meta("last_uidvalidity") + 1)
        self._set_meta("last_uidvalidity", value)
        return value

    def _create_folder_locked(self, name: str, special_use: str | None, subscribed: bool = False) -> None:
        if subscribed:
            self._db.execute("INSERT OR IGNORE INTO subscriptions(name) VALUES(?)", (name,))
        dirname = maildir.folder_dirname(name)
        base = dirname
        n = 1
        while self._db.execute("SELECT 1 FROM folders WHERE dirname = ?", (dirname,)).fetchone():
            n += 1
            dirname = f"{base}%{n}"
        maildir.make_maildir(self.path / dirname if dirname else self.path)
        self._db.execute(
            "INSERT INTO folders(name, dirname, uidvalidity, uidnext, highestmodseq, special_use, subscribed)"
            " VALUES(?, ?, ?, 1, 1, ?, ?)",
            (name, dirname, self._new_uidvalidity(), special_use, int(subscribed)),
        )

    def _folder_dir(self, dirname: str) -> Path:
        return self.path / dirname if dirname else self.path

    def _recover(self) -> None:
        """Bring disk and metadata back in line after a crash (see the module docstring)."""
        with self._write() as db:
            for (filename,) in db.execute("SELECT filename FROM pending_unlink").fetchall():
                (self.path / filename).unlink(missing_ok=True)
            db.execute("DELETE FROM pending_unlink")
            self._check_unflushed()
            known = {row[0] for row in db.execute("SELECT filename FROM messages")}
            present: set[str] = set()
            recovered = []
            folders = db.execute("SELECT id, name, dirname FROM folders").fetchall()
            for folder_id, name, dirname in folders:
                base = self._folder_dir(dirname)
                for sub in ("cur", "new"):
                    directory = base / sub
                    if not directory.is_dir():
                        maildir.make_maildir(base)
                        continue
                    prefix = f"{dirname}/{sub}/" if dirname else f"{sub}/"
                    for entry in os.scandir(directory):
                        rel = prefix + entry.name
                        if rel in known:
                            present.add(rel)
                        elif entry.is_file():
                            if self._adopt_file(folder_id, rel, entry):
                                recovered.append(name)
            if recovered:
                log.warning("%s: recovered %d message file(s) without metadata", self.address, len(recovered))
            if len(present) < len(known):
                self._repair_missing(known - present)
            for _, _, dirname in folders:  # after the repair, which may take files back from tmp/
                self._clean_tmp(self._folder_dir(dirname) / "tmp")
            used = db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()[0]
            self._set_meta("used", used)

    def _check_unflushed(self) -> None:
        """The rows of deliveries committed without a flush that no later transaction knows to be flushed:
        after a power loss their files may be short or empty (dropped here, recorded as expunged: the sender
        never got a "stored") or not in place at all (``_repair_missing``'s, which takes a complete one back
        from tmp/). The complete files are then fsynced and the list emptied in this transaction
        (synchronous=FULL: the rows are durable with it); a delivery of another process still waiting for
        its own flush loses nothing by that, since its files are among the ones checked and fsynced here and
        its rows are in the WAL before ours."""
        entries = self._db.execute("SELECT id, filename, size FROM unflushed").fetchall()
        if not entries:
            return
        complete: list[Path] = []
        short: list[tuple] = []
        for _, rel, size in entries:
            final = self.path / rel
            actual = _size_of(final)
            if actual == size:
                complete.append(final)
            elif actual is not None and (row := self._message_row(rel)) is not None:
                short.append(row)
        self._drop_rows(short, "its file did not reach the disk before a crash; never reported stored")
        # only these few files and their directories: a whole-filesystem flush here would make opening a
        # mailbox wait for every other writer on the disk (the rows become durable with this transaction)
        durable_files.fsync_paths(complete)
        self._db.execute("DELETE FROM unflushed WHERE id <= ?", (max(entry[0] for entry in entries),))

    def _message_row(self, rel: str) -> tuple | None:
        """(folder_id, uid, filename, size) of the message stored in ``rel``."""
        return self._db.execute("SELECT folder_id, uid, filename, size FROM messages WHERE filename = ?",
                                (rel,)).fetchone()

    def _drop_rows(self, rows: list[tuple], why: str) -> None:
        """Remove messages (rows as ``_message_row`` gives them) from the index, recorded as expunged for
        QRESYNC clients; a file still there is moved aside, not deleted: an administrator may look."""
        lost: dict[int, list[tuple]] = {}
        for folder_id, uid, rel, size in rows:
            lost.setdefault(folder_id, []).append((uid, rel, size))
            with contextlib.suppress(OSError):
                _set_aside(self.path / rel)
        for folder_id, removed in lost.items():
            self._remove_locked(folder_id, removed)
        if rows:
            log.warning("%s: %d message(s) removed from the index: %s", self.address, len(rows), why)

    def _repair_missing(self, missing: set[str]) -> None:
        """Rows whose file is not where they say. A crash between a delivery's commit and its flush can leave
        the rename undone (the file is still in tmp/): finish it when the file is complete, and flush it. A
        file that is nowhere complete (removed by hand, or cut short by the crash) takes its row with it."""
        restored: list[Path] = []
        gone: list[tuple] = []
        for rel in sorted(missing):
            final = self.path / rel
            row = self._message_row(rel)
            if row is None:
                continue
            tmp = _tmp_twin(final)
            if final.parent.name == "cur" and _size_of(tmp) == row[3]:
                os.rename(tmp, final)
                restored.append(final)
            else:
                gone.append(row)
        durable_files.fsync_paths(restored)
        if restored:
            log.warning("%s: %d message(s) moved back from tmp/", self.address, len(restored))
        self._drop_rows(gone, "its file is gone")

    def _clean_tmp(self, tmp: Path) -> None:
        if not tmp.is_dir():
            return
        limit = time.time() - TMP_MAX_AGE
        for entry in os.scandir(tmp):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < limit:
                    os.unlink(entry.path)

    def _adopt_file(self, folder_id: int, rel: str, entry: os.DirEntry) -> bool:
        """Index a file found in cur/ or new/ without a row; one shorter or longer than the size its name
        records (a delivery cut short by a crash before its flush) is moved back to tmp/ instead."""
        stat = entry.stat()
        expected = maildir.recorded_size(entry.name)
        if expected is not None and expected != stat.st_size:
            log.warning("%s: %s is %d bytes, its name says %d: not a complete message, moved to tmp/",
                        self.address, rel, stat.st_size, expected)
            _set_aside(Path(entry.path))
            return False
        uid, modseq = self._allocate(folder_id)
        flags = _encode_flags(maildir.parse_info_flags(entry.name))
        self._db.execute(
            "INSERT INTO messages(folder_id, uid, filename, flags, internal_date, size, modseq)"
            " VALUES(?, ?, ?, ?, ?, ?, ?)",
            (folder_id, uid, rel, flags, int(stat.st_mtime), stat.st_size, modseq),
        )
        return True

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

    # ------------------------------------------------------------------ folders

    def folders(self) -> list[FolderInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, uidvalidity, uidnext, highestmodseq, special_use,"
                " name IN (SELECT name FROM subscriptions) FROM folders ORDER BY name"
            ).fetchall()
        return [FolderInfo(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def folder(self, name: str) -> FolderInfo:
        with self._lock:
            row = self._require_folder(name)
            subscribed = self._db.execute("SELECT 1 FROM subscriptions WHERE name = ?", (row[1],)).fetchone()
        return FolderInfo(row[1], row[3], row[4], row[5], row[6], subscribed is not None)

    def subscriptions(self) -> list[str]:
        """Subscribed names; a name stays subscribed when its folder is deleted (RFC 3501 §6.3.9)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM subscriptions ORDER BY name")]

    def create_folder(self, name: str, special_use: str | None = None) -> None:
        """Create ``name``. Missing parents are not created: IMAP shows them as \\Noselect
        (what Dovecot does with Maildir++; RFC 3501 §6.3.3 allows either)."""
        name = validate_folder_name(name)
        with self._write():
            if self._folder_row(name) is not None:
                raise FolderExists(f"folder {name!r} already exists")
            self._create_folder_locked(name, special_use)

    def delete_folder(self, name: str) -> None:
        """Delete a folder and its messages; refused for INBOX and for folders with children (as Dovecot)."""
        name = canonical_folder(name)
        if name == "INBOX":
            raise InvalidFolderName("INBOX cannot be deleted")
        with self._write() as db:
            row = self._require_folder(name)
            child = db.execute(
                "SELECT 1 FROM folders WHERE substr(name, 1, ?) = ?", (len(name) + 1, name + DELIMITER)
            ).fetchone()
            files = [r[0] for r in db.execute("SELECT filename FROM messages WHERE folder_id = ?", (row[0],))]
            size = db.execute("SELECT COALESCE(SUM(size),0) FROM messages WHERE folder_id = ?", (row[0],))
            self._set_meta("used", self._meta("used") - size.fetchone()[0])
            if child:
                # RFC 3501 §6.3.4: the messages go, the name stays for its children (Dovecot keeps it
                # selectable and empty)
                uids = [(r[0],) for r in db.execute("SELECT uid FROM messages WHERE folder_id = ?", (row[0],))]
                modseq = self._bump_modseq(row[0])
                db.executemany("INSERT OR REPLACE INTO expunged(folder_id, uid, modseq) VALUES(?, ?, ?)",
                               [(row[0], u[0], modseq) for u in uids])
                db.execute("DELETE FROM messages WHERE folder_id = ?", (row[0],))
            else:
                db.execute("DELETE FROM messages WHERE folder_id = ?", (row[0],))
                db.execute("DELETE FROM expunged WHERE folder_id = ?", (row[0],))
                db.execute("DELETE FROM folders WHERE id = ?", (row[0],))
            db.executemany("INSERT OR IGNORE INTO pending_unlink VALUES(?)", [(f,) for f in files])
        self._unlink(files)
        self._notify(name)

    def rename_folder(self, old: str, new: str) -> None:
        """Rename a folder and its children (RFC 3501 §6.3.5); renaming INBOX moves its messages."""
        old = canonical_folder(old)
        new = validate_folder_name(new)
        with self._write() as db:
            row = self._folder_row(old)
            children = db.execute(
                "SELECT id, name FROM folders WHERE substr(name, 1, ?) = ?",
                (len(old) + 1, old + DELIMITER),
            ).fetchall()
            if row is None and not children:
                raise FolderNotFound(f"no folder {old!r}")
            if self._folder_row(new) is not None:
                raise FolderExists(f"folder {new!r} already exists")
            if new.startswith(old + DELIMITER):
                raise InvalidFolderName("cannot rename a folder into itself")
            for (sub,) in db.execute("SELECT name FROM subscriptions").fetchall():
                if sub == old or sub.startswith(old + DELIMITER):
                    db.execute("UPDATE OR IGNORE subscriptions SET name = ? WHERE name = ?",
                               (new + sub[len(old):], sub))
            if row is None:  # a \Noselect parent: only its children move
                for child_id, child_name in children:
                    db.execute("UPDATE folders SET name = ? WHERE id = ?", (new + child_name[len(old):], child_id))
            elif old == "INBOX":
                self._create_folder_locked(new, None)
                target = self._folder_row(new)
                uids = [r[0] for r in db.execute("SELECT uid FROM messages WHERE folder_id = ?", (row[0],))]
                self._move_locked(row, uids, target)
            else:
                db.execute("UPDATE folders SET name = ? WHERE id = ?", (new, row[0]))
                for child_id, child_name in children:
                    db.execute("UPDATE folders SET name = ? WHERE id = ?", (new + child_name[len(old):], child_id))
        self._notify(old, new)

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        """Subscribe or unsubscribe a name, whether or not the folder exists (as Dovecot allows)."""
        name = canonical_folder(name)
        with self._write():
            if subscribed:
                self._db.execute("INSERT OR IGNORE INTO subscriptions(name) VALUES(?)", (name,))
            else:
                self._db.execute("DELETE FROM subscriptions WHERE name = ?", (name,))

    def status(self, name: str) -> FolderStatus:
        with self._read() as db:
            row = self._require_folder(name)
            count, recent, seen, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(recent),0),"
                " COALESCE(SUM(instr(' ' || flags || ' ', ' \\Seen ') > 0),0), COALESCE(SUM(size),0)"
                " FROM messages WHERE folder_id = ?",
                (row[0],),
            ).fetchone()
        return FolderStatus(count, recent, count - seen, row[4], row[3], row[5], size)

    # ------------------------------------------------------------------ messages

    def _info(self, row: tuple) -> MessageInfo:
        uid, filename, flags, idate, tz, size, modseq = row
        return MessageInfo(uid, _decode_flags(flags), idate, tz, size, modseq, self._root + filename)

    def flag_list(self, folder: str) -> list[tuple[int, frozenset[str]]]:
        """(UID, flags) of every message in UID order: what SELECT needs, without building MessageInfo."""
        with self._lock:
            row = self._require_folder(folder)
            rows = self._db.execute(
                "SELECT uid, flags FROM messages WHERE folder_id = ? ORDER BY uid", (row[0],)).fetchall()
        return [(uid, _decode_flags(flags)) for uid, flags in rows]

    _COLUMNS = "uid, filename, flags, internal_date, tz_offset, size, modseq"

    def messages(self, folder: str, uids: Iterable[int] | None = None) -> list[MessageInfo]:
        """Messages of the folder in UID order (the IMAP sequence order); only ``uids`` when given."""
        with self._lock:
            row = self._require_folder(folder)
            if uids is None:
                rows = self._db.execute(
                    f"SELECT {self._COLUMNS} FROM messages WHERE folder_id = ? ORDER BY uid", (row[0],)
                ).fetchall()
            else:
                rows = []
                for chunk in _chunks(sorted(set(uids)), 500):
                    marks = ",".join("?" * len(chunk))
                    rows += self._db.execute(
                        f"SELECT {self._COLUMNS} FROM messages WHERE folder_id = ? AND uid IN ({marks})",
                        (row[0], *chunk),
                    ).fetchall()
                rows.sort()
        return [self._info(r) for r in rows]

    def message(self, folder: str, uid: int) -> MessageInfo:
        with self._lock:
            row = self._require_folder(folder)
            found = self._db.execute(
                f"SELECT {self._COLUMNS} FROM messages WHERE folder_id = ? AND uid = ?", (row[0], uid)
            ).fetchone()
        if found is None:
            raise MessageNotFound(f"{folder}: no UID {uid}")
        return self._info(found)

    def read(self, folder: str, uid: int) -> bytes:
        """The exact bytes of a message (as delivered)."""
        return self.message(folder, uid).path.read_bytes()

    def uids(self, folder: str) -> list[int]:
        with self._lock:
            row = self._require_folder(folder)
            return [r[0] for r in self._db.execute(
                "SELECT uid FROM messages WHERE folder_id = ? ORDER BY uid", (row[0],))]

    def changed_since(self, folder: str, modseq: int) -> list[MessageInfo]:
        """Messages whose flags (or existence) changed after ``modseq`` (CONDSTORE, RFC 7162)."""
        with self._lock:
            row = self._require_folder(folder)
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM messages WHERE folder_id = ? AND modseq > ? ORDER BY uid",
                (row[0], modseq),
            ).fetchall()
        return [self._info(r) for r in rows]

    def expunged_since(self, folder: str, modseq: int) -> list[int]:
        """UIDs expunged after ``modseq`` (QRESYNC VANISHED, RFC 7162 §3.2.10)."""
        with self._lock:
            row = self._require_folder(folder)
            return [r[0] for r in self._db.execute(
                "SELECT uid FROM expunged WHERE folder_id = ? AND modseq > ? ORDER BY uid", (row[0], modseq))]

    def recent_uids(self, folder: str) -> set[int]:
        """Messages no session has claimed yet (EXAMINE shows them \\Recent without claiming)."""
        with self._lock:
            row = self._require_folder(folder)
            return {r[0] for r in self._db.execute(
                "SELECT uid FROM messages WHERE folder_id = ? AND recent = 1", (row[0],))}

    def claim_recent(self, folder: str) -> set[int]:
        """Take the \\Recent messages for the calling session; no other session will see them recent
        (RFC 3501 §2.3.2)."""
        with self._write() as db:
            row = self._require_folder(folder)
            uids = {r[0] for r in db.execute(
                "SELECT uid FROM messages WHERE folder_id = ? AND recent = 1", (row[0],))}
            if uids:
                db.execute("UPDATE messages SET recent = 0 WHERE folder_id = ? AND recent = 1", (row[0],))
        return uids

    def deliver(
        self,
        folder: str,
        data: bytes,
        flags: Iterable[str] = (),
        internal_date: datetime | None = None,
    ) -> tuple[int, int]:
        """Store ``data`` durably in ``folder``; returns (UIDVALIDITY, UID). Raises QuotaExceeded."""
        result = self.deliver_batch([Delivery(folder, data, tuple(flags), internal_date)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def deliver_batch(self, items: Sequence[Delivery]) -> list[tuple[int, int] | Exception]:
        """Store several messages with one directory sync and one commit: the group commit of deliveries.

        Each item gets (UIDVALIDITY, UID) or the exception that refused it (QuotaExceeded, FolderNotFound,
        OSError); the others are stored all the same. Durable on return, like ``deliver``.

        The steps, which MailStore.deliver_async runs on an event loop with a shared flush: ``stage`` (the
        files, in tmp/), ``index`` (renames into cur/ and the index rows, committed without a flush), one
        flush of the filesystem, ``settle``.
        """
        batch = self.stage(items)
        assert batch is not None
        error: Exception | None = None
        try:
            if batch.written:
                self.index(batch)
                if batch.indexed:
                    durable_files.sync_path(self.path)
        except Exception as exc:  # noqa: BLE001 - the disk or the index failed: nothing unflushed is "stored"
            error = exc
        return self.settle(batch, error)

    def stage(self, items: Sequence[Delivery], wait: bool = True) -> StagedBatch | None:
        """Check folders and quota and write each accepted message to a file not yet named in its folder
        (maildir.write_staged; not flushed yet).

        With ``wait=False``, None when another thread of this process holds the account (an event loop then
        runs it in a thread instead of blocking).
        """
        batch = StagedBatch(items, [None] * len(items))
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            for i, item in enumerate(items):
                try:
                    batch.rows[i] = self._require_folder(item.folder)
                    self._check_quota(len(item.data))  # early refusal, before paying for the write
                except (FolderNotFound, QuotaExceeded) as exc:
                    batch.results[i] = exc
        finally:
            self._lock.release()
        for i, row in batch.rows.items():
            if batch.results[i] is None:
                try:
                    batch.written[i] = maildir.write_staged(self._folder_dir(row[2]), items[i].data)
                except OSError as exc:
                    batch.results[i] = exc
        return batch

    def index(self, batch: StagedBatch, wait: bool = True) -> bool:
        """Name the batch's files in cur/ and index them in one write transaction, committed without a
        flush: the caller flushes the filesystem (files, links, directories and the WAL at once) before it
        calls the messages stored, outside the cross-process lock, so that the flushes of writers in several
        processes overlap instead of queueing behind each other. The rows are listed in ``unflushed`` until a
        later transaction knows that a flush ran after this one (see the module docstring for the crash).

        With ``wait=False`` nothing is done and False is returned when another thread or process holds the
        write lock (an event loop then looks again a little later, see mailstore.LOCK_POLL).
        """
        if not batch.written:
            return True
        moved: list[Path] = []
        try:
            with self._write(synced=False, wait=wait) as db:
                if self._flushed:
                    db.execute("DELETE FROM unflushed WHERE id <= ?", (self._flushed,))
                used = self._meta("used")
                quota = self._meta("quota")
                for i, staged in batch.written.items():
                    item = batch.items[i]
                    row = self._require_folder(item.folder)
                    if quota and used + len(item.data) > quota:
                        batch.results[i] = QuotaExceeded(self.address, used, quota, len(item.data))
                        continue
                    used += len(item.data)
                    uid, modseq = self._allocate(row[0])
                    rel = f"{row[2]}/cur/{staged.name}:2," if row[2] else f"cur/{staged.name}:2,"
                    final = self.path / rel
                    staged.place(final)
                    moved.append(final)
                    when = item.internal_date or datetime.now(UTC).astimezone()
                    if when.tzinfo is None:
                        when = when.replace(tzinfo=UTC)
                    offset = int(when.utcoffset().total_seconds())  # type: ignore[union-attr]
                    flags_text = _encode_flags(_normalise_flag(f) for f in item.flags)
                    db.execute(
                        "INSERT INTO messages(folder_id, uid, filename, flags, internal_date, tz_offset, size, modseq)"
                        " VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                        (row[0], uid, rel, flags_text, int(when.timestamp()), offset, len(item.data), modseq),
                    )
                    batch.unflushed = db.execute("INSERT INTO unflushed(filename, size) VALUES(?, ?)",
                                                 (rel, len(item.data))).lastrowid or 0
                    batch.indexed.append((i, (row[3], uid)))
                self._set_meta("used", used)
        except _Busy:
            return False
        except BaseException:  # rolled back: no row points at the renamed files
            batch.indexed.clear()
            for final in moved:
                final.unlink(missing_ok=True)
            raise
        return True

    def settle(self, batch: StagedBatch, error: Exception | None = None) -> list[tuple[int, int] | Exception]:
        """The batch's outcome once its last flush returned (``error``: the exception that stopped it).

        An indexed message whose flush failed is reported as failed although it stays indexed: the caller
        must not answer "stored" (a retry may then store it twice, which is better than telling the sender
        it is safe). Files that did not make it into the index are removed.
        """
        results = batch.results
        if error is None and batch.unflushed > self._flushed:
            self._flushed = batch.unflushed  # syncfs flushed every commit before it, other writers' too
        for i, result in batch.indexed:
            results[i] = result if error is None else error
        if error is not None:
            for i in batch.written:
                if results[i] is None:
                    results[i] = error
        for i, staged in batch.written.items():
            if not isinstance(results[i], tuple):
                staged.discard()
        for folder in dict.fromkeys(batch.rows[i][1] for i, result in batch.indexed if error is None):
            self._notify(folder)
        return [r if r is not None else OSError("not stored") for r in results]

    def store_flags(
        self,
        folder: str,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> tuple[list[MessageInfo], list[int]]:
        """Change flags: mode is "add", "remove" or "replace" (RFC 3501 §6.4.6).

        Returns (messages whose flags changed, with their new MODSEQ; UIDs refused because their
        MODSEQ is above ``unchanged_since``, RFC 7162 §3.1.3).
        """
        wanted = {_normalise_flag(f) for f in flags if f != "\\Recent"}
        changed: list[MessageInfo] = []
        failed: list[int] = []
        uid_list = sorted(set(uids))
        with self._write() as db:
            row = self._require_folder(folder)
            modseq = None
            for chunk in _chunks(uid_list, 500):
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT {self._COLUMNS} FROM messages WHERE folder_id = ? AND uid IN ({marks})",
                    (row[0], *chunk),
                ).fetchall()
                for r in rows:
                    current = _decode_flags(r[2])
                    if unchanged_since is not None and r[6] > unchanged_since:
                        failed.append(r[0])
                        continue
                    if mode == "add":
                        new = current | wanted
                    elif mode == "remove":
                        new = current - wanted
                    else:
                        new = frozenset(wanted)
                    if new == current:
                        continue
                    if modseq is None:
                        modseq = self._bump_modseq(row[0])
                    db.execute(
                        "UPDATE messages SET flags = ?, modseq = ? WHERE folder_id = ? AND uid = ?",
                        (_encode_flags(new), modseq, row[0], r[0]),
                    )
                    changed.append(self._info((r[0], r[1], _encode_flags(new), r[3], r[4], r[5], modseq)))
        if changed:
            self._notify(row[1])
        return changed, sorted(failed)

    def expunge(self, folder: str, uids: Iterable[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only those in ``uids`` when given; RFC 4315 UID EXPUNGE).

        Returns the expunged UIDs in ascending order.
        """
        with self._write() as db:
            row = self._require_folder(folder)
            rows = db.execute(
                "SELECT uid, filename, size FROM messages WHERE folder_id = ?"
                " AND instr(' ' || flags || ' ', ' \\Deleted ') > 0 ORDER BY uid",
                (row[0],),
            ).fetchall()
            if uids is not None:
                allowed = set(uids)
                rows = [r for r in rows if r[0] in allowed]
            if not rows:
                return []
            self._remove_locked(row[0], rows)
        self._unlink([r[1] for r in rows])
        self._notify(row[1])
        return [r[0] for r in rows]

    def delete_messages(self, folder: str, uids: Iterable[int]) -> list[int]:
        """Remove the given messages whatever their flags (POP3 DELE+QUIT); returns the removed UIDs."""
        wanted = sorted(set(uids))
        with self._write() as db:
            row = self._require_folder(folder)
            rows = []
            for chunk in _chunks(wanted, 500):
                marks = ",".join("?" * len(chunk))
                rows += db.execute(
                    f"SELECT uid, filename, size FROM messages WHERE folder_id = ? AND uid IN ({marks})",
                    (row[0], *chunk),
                ).fetchall()
            if not rows:
                return []
            self._remove_locked(row[0], rows)
        self._unlink([r[1] for r in rows])
        self._notify(row[1])
        return sorted(r[0] for r in rows)

    def _remove_locked(self, folder_id: int, rows: list[tuple]) -> None:
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

    def copy(self, source: str, uids: Iterable[int], target: str) -> tuple[int, list[tuple[int, int]]]:
        """Copy messages (hard links, so no extra space on disk); returns (target UIDVALIDITY,
        [(source UID, new UID)]) for UIDPLUS COPYUID (RFC 4315 §3). Counts against the quota."""
        wanted = sorted(set(uids))
        links: list[Path] = []
        pairs: list[tuple[int, int]] = []
        committed = False
        try:
            with self._write() as db:
                src = self._require_folder(source)
                dst = self._require_folder(target)
                rows = self._select_uids(src[0], wanted)
                if not rows:
                    return dst[3], []
                self._check_quota(sum(r[5] for r in rows))
                first_uid, modseq = self._allocate(dst[0], len(rows))
                base = self._folder_dir(dst[2])
                for offset, r in enumerate(rows):
                    name = maildir.unique_name(r[5]) + ":2,"
                    rel = f"{dst[2]}/cur/{name}" if dst[2] else f"cur/{name}"
                    os.link(self.path / r[1], self.path / rel)
                    links.append(self.path / rel)
                    new_uid = first_uid + offset
                    db.execute(
                        "INSERT INTO messages(folder_id, uid, filename, flags, internal_date, tz_offset, size,"
                        " modseq) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                        (dst[0], new_uid, rel, r[2], r[3], r[4], r[5], modseq),
                    )
                    pairs.append((r[0], new_uid))
                durable_files.fsync_dir(base / "cur")
                self._set_meta("used", self._meta("used") + sum(r[5] for r in rows))
            committed = True
        finally:
            if not committed:
                for link in links:
                    link.unlink(missing_ok=True)
        self._notify(dst[1])
        return dst[3], pairs

    def move(self, source: str, uids: Iterable[int], target: str) -> tuple[int, list[tuple[int, int]]]:
        """Atomic MOVE (RFC 6851): the rows change folder and UID in one transaction; files stay put."""
        wanted = sorted(set(uids))
        with self._write():
            src = self._require_folder(source)
            dst = self._require_folder(target)
            pairs = self._move_locked(src, wanted, dst)
        self._notify(src[1], dst[1])
        return dst[3], pairs

    def _select_uids(self, folder_id: int, uids: list[int]) -> list[tuple]:
        rows: list[tuple] = []
        for chunk in _chunks(uids, 500):
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(
                "SELECT uid, filename, flags, internal_date, tz_offset, size FROM messages"
                f" WHERE folder_id = ? AND uid IN ({marks}) ORDER BY uid",
                (folder_id, *chunk),
            ).fetchall()
        rows.sort()
        return rows

    def _move_locked(self, src: tuple, uids: list[int], dst: tuple) -> list[tuple[int, int]]:
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


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _tmp_twin(path: Path) -> Path:
    """Where a message file of cur/ or new/ was (or goes back to) in its folder's tmp/."""
    return path.parent.parent / "tmp" / (path.name.rpartition(":2,")[0] or path.name)


def _set_aside(path: Path) -> None:
    """Move a message file of cur/ or new/ to its folder's tmp/ (cleaned after TMP_MAX_AGE)."""
    os.rename(path, _tmp_twin(path))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _statements() -> list[str]:
    return [s.strip() for s in SCHEMA.split(";") if s.strip()]
