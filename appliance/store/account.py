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

from pathlib import Path

from appliance.store.database import DELIMITER, canonical_folder
from appliance.store.extensions import Extensions
from appliance.store.folders import DEFAULT_FOLDERS, FolderInfo, Folders, FolderStatus, validate_folder_name
from appliance.store.messages import SYSTEM_FLAGS, MessageInfo, Messages
from appliance.store.recovery import TMP_MAX_AGE, Recovery
from appliance.store.staging import Delivery, StagedBatch, Staging

__all__ = [
    "DEFAULT_FOLDERS",
    "DELIMITER",
    "SYSTEM_FLAGS",
    "TMP_MAX_AGE",
    "Account",
    "Delivery",
    "FolderInfo",
    "FolderStatus",
    "MessageInfo",
    "StagedBatch",
    "canonical_folder",
    "validate_folder_name",
]


class Account(Folders, Messages, Staging, Recovery, Extensions):
    """All folders of one address. Obtain it from ``MailStore.account(address)``; it is shared by every
    session of the process and is thread-safe.

    Its parts, each a module of its own on the index of ``appliance.store.database``: folders
    (``appliance.store.folders``), messages and flags (``messages``), deliveries (``staging``) and the schema
    and repair at open (``recovery``)."""

    def __init__(self, address: str, path: Path) -> None:
        super().__init__(address, path)
        with self._write():
            self._create_tables()
            self._add_extension_columns()
            for name, special in DEFAULT_FOLDERS:
                if self._folder_row(name) is None:
                    # like Dovecot's "auto = subscribe" for the special-use folders
                    self._create_folder_locked(name, special, subscribed=special is not None)
        self._recover()
