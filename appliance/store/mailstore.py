"""MailStore: the entry point to every account's mail under ``data_dir/mail``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from appliance.durable.flush import GroupFlush, flusher_for
from appliance.store.account import Account
from appliance.store.errors import InvalidAddress
from appliance.store.fts import INDEXER, FtsSettings
from appliance.store.staging import Delivery, StagedBatch

BATCH_MAX = 256  # deliveries per group commit of one account
INLINE_WRITE = 1024 * 1024  # a batch of files up to this size is written on the event loop, larger in a thread
# While another process holds a mailbox's write lock (an acceptor indexing its own batch: a fraction of a
# millisecond), the loop looks again after these pauses (about 19 ms in all) before it parks a thread on the
# lock. A thread blocked on the flock holds the account, so the next batches would follow it into threads, and
# threads doing SQLite and file calls beside the loop hand the GIL back and forth at every call (measured: 90
# futex calls per message instead of 7, and 14% fewer messages per second with two acceptors).
LOCK_POLL = tuple(min(0.0001 * 2**n, 0.002) for n in range(13))


class _LoopBatcher:
    """Group commit for one account on one event loop, with the flush shared through the filesystem's
    GroupFlush: the deliveries submitted during one turn of the loop form a batch; the loop writes its
    files and commits its index rows (cheap, and no thread hand-off), a flusher thread does the wait for
    the disk. Batches overlap: while one waits for its flush, the next is written and committed."""

    def __init__(self, account: Account, loop: asyncio.AbstractEventLoop, flusher: GroupFlush,
                 stored: Callable[[], None] | None = None) -> None:
        self.account = account
        self._stored = stored  # called after a batch stored something (the full-text indexer's cue)
        self.loop = loop
        self._flusher = flusher
        self._pending: list[tuple[Delivery, asyncio.Future]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()

    def submit(self, item: Delivery) -> asyncio.Future:
        future = self.loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._start)
        return future

    def _start(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
            task = self.loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Delivery, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        try:
            results: list = await self._deliver(items)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: every delivery in it did
            results = [exc] * len(items)
        if self._stored is not None and not all(isinstance(r, Exception) for r in results):
            self._stored()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the waiter went away (its session closed); the outcome stands all the same
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _deliver(self, items: list[Delivery]) -> list:
        account = self.account
        staged: StagedBatch | None = None
        if sum(len(item.data) for item in items) <= INLINE_WRITE:
            staged = account.stage(items, wait=False)
        if staged is None:  # large, or a thread of this process (an IMAP command) holds the account
            staged = await asyncio.to_thread(account.stage, items)
        assert staged is not None
        error: Exception | None = None
        try:
            if staged.written:
                if not account.index(staged, wait=False):
                    await self._index_when_free(staged)
                if staged.indexed:
                    await self._flusher.request()  # the files, their renames and the index rows at once
        except Exception as exc:  # noqa: BLE001 - see Account.settle
            error = exc
        return account.settle(staged, error)

    async def _index_when_free(self, staged: StagedBatch) -> None:
        """Index a batch whose mailbox another process (or a thread of this one) is writing: see LOCK_POLL."""
        for pause in LOCK_POLL:
            await asyncio.sleep(pause)
            if self.account.index(staged, wait=False):
                return
        await asyncio.to_thread(self.account.index, staged)  # a long hold (an IMAP EXPUNGE of many messages)


def canonical_address(address: str) -> str:
    """Lower-case the address and check that both parts can name a directory."""
    address = address.strip().lower()
    localpart, sep, domain = address.rpartition("@")
    if not sep or not localpart or not domain:
        raise InvalidAddress(f"not a mailbox address: {address!r}")
    for part in (localpart, domain):
        if "/" in part or "\x00" in part or part.startswith(".") or part in ("..",):
            raise InvalidAddress(f"address part {part!r} cannot name a mailbox directory")
    return address


class MailStore:
    """Every account's mail, as Maildir files plus SQLite metadata.

    Layout: ``root/<domain>/<localpart>/`` is the account's INBOX Maildir (cur/ new/ tmp/), other
    folders are Maildir++ sub-directories (``.Sent``, ``.Archive.2024``), and ``mailfleet.sqlite``
    (WAL) beside them holds UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, MODSEQ, internal dates,
    sizes and the quota. Safe to use from several threads and several processes at once.

    Usage (the lead's SMTP delivery, POP3 and IMAP all go through this):

        store = MailStore(data_dir / "mail")
        uid = store.deliver("alice@example.org", raw_bytes)      # durable on return
        _, uid = await store.deliver_async("alice@example.org", raw_bytes)  # from an event loop, batched
        store.set_quota("alice@example.org", 50_000_000)         # QuotaExceeded beyond that
        acct = store.account("alice@example.org")                # appliance.store.account.Account
        for info in acct.messages("INBOX"):                      # MessageInfo(uid, flags, internal_date,
            data = info.path.read_bytes()                        #   size, modseq, path) in UID order
        acct.delete_messages("INBOX", [uid])                     # POP3 DELE at QUIT
        with acct.exclusive_lock("pop3"): ...                    # POP3 maildrop lock (MailboxLocked)
        unsubscribe = acct.subscribe(lambda folder: ...)         # in-process change notification

    Other processes' changes are seen by re-reading (``acct.status``/``acct.uids``/``changed_since``).
    """

    def __init__(self, root: Path, fts: FtsSettings | None = None) -> None:
        self.root = Path(root)
        self.fts = fts if fts is not None else FtsSettings()  # imap.full_text_search, fts_max_bytes, fts_autoindex
        self.root.mkdir(parents=True, exist_ok=True)
        self._accounts: dict[str, Account] = {}
        self._batchers: dict[str, _LoopBatcher] = {}
        self._lock = threading.Lock()

    def account_path(self, address: str) -> Path:
        address = canonical_address(address)
        localpart, _, domain = address.rpartition("@")
        return self.root / domain / localpart

    def account(self, address: str) -> Account:
        """The (process-wide, shared) Account for ``address``; created with its default folders on first use."""
        address = canonical_address(address)
        with self._lock:
            account = self._accounts.get(address)
            if account is None:
                account = Account(address, self.account_path(address))
                self._accounts[address] = account
            return account

    def deliver(
        self,
        address: str,
        data: bytes,
        folder: str = "INBOX",
        flags: Iterable[str] = (),
        internal_date: datetime | None = None,
    ) -> int:
        """Store one message and return its UID; the file and metadata are fsynced/committed before
        this returns. Thread-safe (call it via asyncio.to_thread). Raises QuotaExceeded (its
        ``permanent`` attribute tells 552 5.2.2 from 452 4.2.2) and FolderNotFound."""
        account = self.account(address)
        uid = account.deliver(folder, data, flags, internal_date)[1]
        if self.fts.enabled and self.fts.autoindex:
            INDEXER.schedule(account, self.fts)
        return uid

    def deliver_async(self, address: str, data: bytes, folder: str = "INBOX", flags: Iterable[str] = (),
                      internal_date: datetime | None = None) -> asyncio.Future:
        """``deliver`` for a caller on an event loop: a future that gets (UIDVALIDITY, UID) once the message is
        durable, or the exception. Deliveries to one account made in the same turn of the loop share their
        commit and their flushes (see _LoopBatcher)."""
        item = Delivery(folder, data, tuple(flags), internal_date)
        key = canonical_address(address)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(key)
        if batcher is not None and batcher.loop is loop:
            return batcher.submit(item)
        return loop.create_task(self._first_delivery(key, item))

    async def _first_delivery(self, key: str, item: Delivery) -> tuple[int, int]:
        """Opening an account (SQLite, the crash check, a directory scan) is slow: off the event loop."""
        account = await asyncio.to_thread(self.account, key)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(key)
        if batcher is None or batcher.loop is not loop:
            stored = (lambda: INDEXER.schedule(account, self.fts)) if self.fts.enabled and self.fts.autoindex else None
            batcher = self._batchers[key] = _LoopBatcher(account, loop, flusher_for(account.path), stored)
        return await batcher.submit(item)

    def fts_idle(self, timeout: float = 60.0) -> bool:
        """Wait for the background full-text indexer to index what was delivered (tests, the benchmark)."""
        return INDEXER.idle(timeout)

    def changed_elsewhere(self, address: str, folder: str) -> None:
        """Another process changed ``folder`` of ``address``: tell this process's subscribers (IMAP IDLE) now.
        An account no session here has opened is left alone."""
        try:
            key = canonical_address(address)
        except InvalidAddress:
            return
        with self._lock:
            account = self._accounts.get(key)
        if account is not None:
            account.announce(folder)

    def set_quota(self, address: str, quota_bytes: int) -> None:
        """Quota in bytes for the whole account; 0 = unlimited."""
        self.account(address).set_quota(quota_bytes)

    def quota(self, address: str) -> tuple[int, int]:
        """(bytes used, quota bytes; 0 = unlimited)."""
        return self.account(address).quota()

    def subscribe(self, address: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """See Account.subscribe."""
        return self.account(address).subscribe(callback)

    def close(self) -> None:
        with self._lock:
            self._batchers.clear()
            for account in self._accounts.values():
                INDEXER.forget(account)
                account.close()
            self._accounts.clear()
