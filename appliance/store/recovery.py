"""Opening an account: the index's schema and the repair of disk and index after a crash or a power loss
(the durability rule it relies on is in appliance.store.account's docstring)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from appliance.durable import files as durable_files
from appliance.store import maildir
from appliance.store.database import AccountDatabase
from appliance.store.messages import encode_flags

log = logging.getLogger("appliance.store")

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


class Recovery(AccountDatabase):
    """What ``Account`` does when it opens: create the tables, then repair."""

    def _create_tables(self) -> None:
        """Create what is missing, in the open write transaction (every statement is IF NOT EXISTS)."""
        for statement in _statements():
            self._db.execute(statement)

    def _recover(self) -> None:
        """Bring disk and metadata back in line after a crash (see appliance.store.account)."""
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

    def _adopt_file(self, folder_id: int, rel: str, entry: os.DirEntry[str]) -> bool:
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
        flags = encode_flags(maildir.parse_info_flags(entry.name))
        self._db.execute(
            "INSERT INTO messages(folder_id, uid, filename, flags, internal_date, size, modseq)"
            " VALUES(?, ?, ?, ?, ?, ?, ?)",
            (folder_id, uid, rel, flags, int(stat.st_mtime), stat.st_size, modseq),
        )
        return True


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


def _statements() -> list[str]:
    return [s.strip() for s in SCHEMA.split(";") if s.strip()]
