"""Local delivery for the primary role: into the recipient's mailbox in the store (Maildir on disk), from the queue
or, before the 250, from the intake (``MailboxTarget``).

The store's deliver() is the commit of this transaction: it returns only once the file is fsynced and renamed
into the mailbox and the index row is committed; only then is the recipient marked delivered in the queue.

A recipient with Sieve scripts (appliance/sieve) takes its own path, ``SieveActions.deliver``
(delivery/sieve_actions.py): the scripts decide, then each action is carried out and recorded, so that a retry
after a failure or a crash does not repeat what was done.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence

from appliance.delivery.client import RcptResult
from appliance.delivery.outcome import log_outcome
from appliance.delivery.router import LOCAL
from appliance.delivery.sieve_actions import SieveActions
from appliance.message.model import DELIVERED, META_FOLDER, QueuedMessage, Recipient
from appliance.pipeline.intake import BufferedDelivery
from appliance.store import MailStore
from appliance.store.errors import FolderNotFound, InvalidFolderName, QuotaExceeded, StoreError

log = logging.getLogger("appliance.delivery")


def folder_of(message: QueuedMessage) -> str:
    """The folder a message is filed into: its META_FOLDER (a content check's Junk), else INBOX."""
    folder = message.meta.get(META_FOLDER)
    return folder if isinstance(folder, str) and folder else "INBOX"


class LocalDelivery:
    def __init__(self, store: MailStore, hostname: str, quota_of: Callable[[str], int] | None = None,
                 sieve: SieveActions | None = None) -> None:
        self.store = store
        self.hostname = hostname
        self._quota_of = quota_of
        self.sieve = sieve
        self._quota_set: dict[str, int] = {}  # what the store was last told, to write it only on change

    async def __call__(self, message: QueuedMessage, rcpts: Sequence[Recipient],
                       data: bytes) -> dict[str, RcptResult]:
        """Deliver to every recipient at once: deliveries to one mailbox share a commit (MailStore.deliver_async).

        The folder is the message's META_FOLDER (a content check's Junk) where that user has it, else INBOX."""
        folder = folder_of(message)
        pending: dict[str, tuple[asyncio.Future, bytes]] = {}
        results: dict[str, RcptResult] = {}
        sieve = self.sieve
        for rcpt in rcpts:
            # RFC 5321 §4.4: the delivering MTA records the envelope sender as Return-Path.
            headers = f"Return-Path: <{message.mail_from}>\r\nDelivered-To: {rcpt.address}\r\n".encode()
            try:
                await self._apply_quota(rcpt.address)
                copy = headers + data
                if sieve is not None and sieve.applies(rcpt.address):
                    results[rcpt.address] = await sieve.deliver(message, rcpt, copy, folder)
                    continue
                pending[rcpt.address] = (self.store.deliver_async(rcpt.address, copy, folder), copy)
            except Exception as exc:
                results[rcpt.address] = self._failure(message, rcpt.address, exc)
        for address, (future, copy) in pending.items():
            try:
                try:
                    uid = (await future)[1]
                except (FolderNotFound, InvalidFolderName):  # the user deleted (or never had) that folder
                    log.info("queue_id=%s %s has no folder %r; delivering into INBOX", message.queue_id,
                             address, folder)
                    uid = (await self.store.deliver_async(address, copy))[1]
            except Exception as exc:
                results[address] = self._failure(message, address, exc)
            else:
                results[address] = RcptResult(250, "2.0.0", f"delivered to mailbox (uid {uid})", None)
        return results

    async def _apply_quota(self, address: str) -> None:
        """Tell the store the directory's quota for ``address`` when it changed since the last delivery."""
        if self._quota_of is None:
            return
        quota = self._quota_of(address)
        if self._quota_set.get(address) != quota:
            await asyncio.to_thread(self.store.set_quota, address, quota)
            self._quota_set[address] = quota

    @staticmethod
    def _failure(message: QueuedMessage, address: str, exc: Exception) -> RcptResult:
        if isinstance(exc, QuotaExceeded):
            if exc.permanent:
                return RcptResult(552, "5.2.2", f"message larger than the mailbox quota of {address}", None)
            return RcptResult(452, "4.2.2", f"mailbox {address} is full", None)
        if isinstance(exc, StoreError | OSError | sqlite3.Error):
            log.error("queue_id=%s local delivery to %s failed: %s", message.queue_id, address, exc)
        else:  # a bug: this recipient waits in the queue, the others are delivered and accounted for
            log.error("queue_id=%s local delivery to %s failed unexpectedly", message.queue_id, address,
                      exc_info=exc)
        return RcptResult(451, "4.3.0", f"mailbox unavailable: {exc.__class__.__name__}", None)


class MailboxTarget:
    """The mailboxes as a delivery target of the intake (pipeline/intake.py): a message for this host's own
    mailboxes only is stored in them before the 250. ``delivered`` hears of each mailbox that got mail (the
    queue process wakes the IMAP sessions idling on it)."""

    def __init__(self, local: LocalDelivery, delivered: Callable[[str, str], None] | None = None) -> None:
        self._local = local
        self._delivered = delivered

    def start(self, message: QueuedMessage) -> MailboxDelivery:
        return MailboxDelivery(self._local, self._delivered, message)


class MailboxDelivery(BufferedDelivery):
    __slots__ = ("_local", "_delivered")

    def __init__(self, local: LocalDelivery, delivered: Callable[[str, str], None] | None,
                 message: QueuedMessage) -> None:
        super().__init__(message)
        self._local = local
        self._delivered = delivered

    async def commit(self) -> list[Recipient]:
        """The store's commit for each mailbox (file, index row, flush); what a mailbox refused (full, store
        error) is returned, for the spool to retry or bounce. A mailbox either committed a delivery or holds
        nothing of it."""
        message = self.message
        results = await self._local(message, self.recipients, self.data)
        left = []
        for rcpt in self.recipients:
            result = results[rcpt.address]
            if result.code == 250:
                log_outcome(message.queue_id, rcpt.address, LOCAL, 0, DELIVERED, result)
                if self._delivered is not None:
                    self._delivered(rcpt.address, folder_of(message))
            else:
                left.append(rcpt)
        return left
