"""Deliveries into an account, in three steps so that an event loop can run them around a shared filesystem
flush: ``stage`` (each message written to a file not yet named in its folder, maildir.write_staged),
``index`` (the files linked into cur/ and their rows committed without a flush, listed in ``unflushed``),
then, after one flush of the filesystem, ``settle`` (the outcome per message). ``deliver_batch`` runs the
three in a row for callers without an event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.durable import files as durable_files
from appliance.store import maildir
from appliance.store.database import AccountDatabase, Busy
from appliance.store.errors import FolderNotFound, QuotaExceeded
from appliance.store.messages import encode_flags, normalise_flag


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
    results: list[tuple[int, int] | Exception | None]
    rows: dict[int, tuple] = field(default_factory=dict)
    written: dict[int, maildir.StagedFile] = field(default_factory=dict)
    indexed: list[tuple[int, tuple[int, int]]] = field(default_factory=list)
    unflushed: int = 0  # the highest ``unflushed`` id of this batch's rows


class Staging(AccountDatabase):
    """The delivery operations of ``Account``."""

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
        results: list[tuple[int, int] | Exception | None] = [None] * len(items)
        batch = StagedBatch(items, results)
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
        later transaction knows that a flush ran after this one (see appliance.store.account for the crash).

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
                    flags_text = encode_flags(normalise_flag(f) for f in item.flags)
                    db.execute(
                        "INSERT INTO messages(folder_id, uid, filename, flags, internal_date, tz_offset, size, modseq)"
                        " VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                        (row[0], uid, rel, flags_text, int(when.timestamp()), offset, len(item.data), modseq),
                    )
                    batch.unflushed = db.execute("INSERT INTO unflushed(filename, size) VALUES(?, ?)",
                                                 (rel, len(item.data))).lastrowid or 0
                    batch.indexed.append((i, (row[3], uid)))
                self._set_meta("used", used)
        except Busy:
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
