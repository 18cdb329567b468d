"""What the IMAP extensions keep with a message: its EMAILID (OBJECTID, RFC 8474 §5.1) and its PREVIEW text
(RFC 8970), in two columns the open adds to ``messages`` (additive: older indexes gain them, NULL until
needed).

Both are filled lazily, the first time a client asks, so that deliveries pay nothing for them. Being columns
of the message's row, they follow it through MOVE and the RENAME of INBOX (the row changes folder, the value
stays); a COPY is a new row and gets its own. Folder ids (MAILBOXID) need no column: a folder's UIDVALIDITY is
already unique in the account (strictly increasing, see ``Folders._new_uidvalidity``), never changes and
survives RENAME, which is what RFC 8474 §4 asks of a MAILBOXID.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from appliance.store.database import AccountDatabase, chunks

COLUMNS = (("emailid", "TEXT"), ("preview", "TEXT"))


def mailbox_id(uidvalidity: int) -> str:
    """The MAILBOXID of the folder with this UIDVALIDITY (RFC 8474 objectid: 1*255 ALPHA/DIGIT/-/_)."""
    return f"F{uidvalidity:x}"


class Extensions(AccountDatabase):
    """The OBJECTID and PREVIEW operations of ``Account``."""

    def _add_extension_columns(self) -> None:
        """Add the columns an older index lacks, in the open write transaction of ``Account.__init__``."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        for name, kind in COLUMNS:
            if name not in present:
                self._db.execute(f"ALTER TABLE messages ADD COLUMN {name} {kind}")

    def email_ids(self, folder: str, uids: Iterable[int]) -> dict[int, str]:
        """UID -> EMAILID of the given messages, assigning random ids (96 bits) to those that have none."""
        wanted = sorted(set(uids))
        found = self._column(folder, wanted, "emailid")
        missing = [uid for uid in wanted if uid in found and found[uid] is None]
        if missing:
            with self._write() as db:
                row = self._require_folder(folder)
                for uid in missing:  # another session may have assigned one meanwhile: keep it
                    db.execute("UPDATE messages SET emailid = ? WHERE folder_id = ? AND uid = ? AND emailid IS NULL",
                               ("M" + secrets.token_hex(12), row[0], uid))
            found = self._column(folder, wanted, "emailid")
        return {uid: value for uid, value in found.items() if value is not None}

    def previews(self, folder: str, uids: Iterable[int]) -> dict[int, str | None]:
        """UID -> cached PREVIEW text (None when not computed yet) of the messages that exist."""
        return self._column(folder, sorted(set(uids)), "preview")

    def store_previews(self, folder: str, previews: dict[int, str]) -> None:
        """Cache computed previews (a message's content never changes, so neither does its preview)."""
        if not previews:
            return
        with self._write() as db:
            row = self._require_folder(folder)
            db.executemany("UPDATE messages SET preview = ? WHERE folder_id = ? AND uid = ?",
                           [(text, row[0], uid) for uid, text in previews.items()])

    def _column(self, folder: str, uids: list[int], column: str) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        with self._lock:
            row = self._require_folder(folder)
            for chunk in chunks(uids, 500):
                marks = ",".join("?" * len(chunk))
                out.update(self._db.execute(
                    f"SELECT uid, {column} FROM messages WHERE folder_id = ? AND uid IN ({marks})",
                    (row[0], *chunk)).fetchall())
        return out
