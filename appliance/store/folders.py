"""An account's folders: LIST, CREATE, DELETE, RENAME, SUBSCRIBE and STATUS (RFC 3501 §6.3) on the index.

Folder names use "/" as hierarchy delimiter; missing parents are not created (IMAP lists them \\Noselect).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from appliance.store import maildir
from appliance.store.database import DELIMITER, AccountDatabase, canonical_folder
from appliance.store.errors import FolderExists, FolderNotFound, InvalidFolderName

DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
)


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


class Folders(AccountDatabase):
    """The folder operations of ``Account``."""

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
                target = self._require_folder(new)
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

    def _new_uidvalidity(self) -> int:
        """Strictly increasing per account, so a re-created folder never reuses a UIDVALIDITY."""
        value = max(int(time.time()), self._meta("last_uidvalidity") + 1)
        self._set_meta("last_uidvalidity", value)
        return value
