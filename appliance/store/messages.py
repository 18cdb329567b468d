"""An account's messages and their flags: listing, reading, STORE, EXPUNGE, COPY, MOVE, CONDSTORE/QRESYNC
changes (RFC 7162) and \\Recent."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from appliance.durable import files as durable_files
from appliance.store import maildir
from appliance.store.database import AccountDatabase, chunks
from appliance.store.errors import MessageNotFound

SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})

_ZONES: dict[int, timezone] = {}


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


def encode_flags(flags: Iterable[str]) -> str:
    """Flags as the index stores them: sorted, space-separated, without \\Recent (a session's, not stored)."""
    return " ".join(sorted({f for f in flags if f and f != "\\Recent"}))


def decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def normalise_flag(flag: str) -> str:
    """System flags are case-insensitive (RFC 3501 §2.3.2): store them in their canonical case."""
    if flag.startswith("\\"):
        for known in SYSTEM_FLAGS:
            if known.lower() == flag.lower():
                return known
    return flag


class Messages(AccountDatabase):
    """The message and flag operations of ``Account``."""

    _COLUMNS = "uid, filename, flags, internal_date, tz_offset, size, modseq"

    def _info(self, row: tuple) -> MessageInfo:
        uid, filename, flags, idate, tz, size, modseq = row
        return MessageInfo(uid, decode_flags(flags), idate, tz, size, modseq, self._root + filename)

    def flag_list(self, folder: str) -> list[tuple[int, frozenset[str]]]:
        """(UID, flags) of every message in UID order: what SELECT needs, without building MessageInfo."""
        with self._lock:
            row = self._require_folder(folder)
            rows = self._db.execute(
                "SELECT uid, flags FROM messages WHERE folder_id = ? ORDER BY uid", (row[0],)).fetchall()
        return [(uid, decode_flags(flags)) for uid, flags in rows]

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
                for chunk in chunks(sorted(set(uids)), 500):
                    marks = ",".join("?" * len(chunk))
                    rows += self._db.execute(
                        f"SELECT {self._COLUMNS} FROM messages WHERE folder_id = ? AND uid IN ({marks})",
                        (row[0], *chunk),
                    ).fetchall()
                rows.sort()
        return [self._info(r) for r in rows]

    def all_files(self) -> list[str]:
        """The file (relative to the account) of every message in every folder: what the full-text index
        (``appliance.store.fts``) compares itself with."""
        with self._lock:
            return [name for (name,) in self._db.execute("SELECT filename FROM messages")]

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
        wanted = {normalise_flag(f) for f in flags if f != "\\Recent"}
        changed: list[MessageInfo] = []
        failed: list[int] = []
        uid_list = sorted(set(uids))
        with self._write() as db:
            row = self._require_folder(folder)
            modseq = None
            for chunk in chunks(uid_list, 500):
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT {self._COLUMNS} FROM messages WHERE folder_id = ? AND uid IN ({marks})",
                    (row[0], *chunk),
                ).fetchall()
                for r in rows:
                    current = decode_flags(r[2])
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
                        (encode_flags(new), modseq, row[0], r[0]),
                    )
                    changed.append(self._info((r[0], r[1], encode_flags(new), r[3], r[4], r[5], modseq)))
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
            for chunk in chunks(wanted, 500):
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
