"""Local delivery for the primary role: queue -> the recipient's mailbox in the store (Maildir on disk).

The store's deliver() is the commit of this transaction: it returns only once the file is fsynced and renamed
into the mailbox and the index row is committed; only then is the recipient marked delivered in the queue.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence

from appliance.delivery.client import RcptResult
from appliance.message.model import QueuedMessage, Recipient
from appliance.store import MailStore
from appliance.store.errors import QuotaExceeded, StoreError

log = logging.getLogger("appliance.delivery")


class LocalDelivery:
    def __init__(self, store: MailStore, hostname: str, quota_of: Callable[[str], int] | None = None) -> None:
        self.store = store
        self.hostname = hostname
        self._quota_of = quota_of
        self._quota_set: dict[str, int] = {}  # what the store was last told, to write it only on change

    async def __call__(self, message: QueuedMessage, rcpts: Sequence[Recipient],
                       data: bytes) -> dict[str, RcptResult]:
        """Deliver to every recipient at once: deliveries to one mailbox share a commit (MailStore.deliver_async)."""
        pending: dict[str, asyncio.Future] = {}
        results: dict[str, RcptResult] = {}
        for rcpt in rcpts:
            # RFC 5321 §4.4: the delivering MTA records the envelope sender as Return-Path.
            headers = f"Return-Path: <{message.mail_from}>\r\nDelivered-To: {rcpt.address}\r\n".encode()
            try:
                await self._apply_quota(rcpt.address)
                pending[rcpt.address] = self.store.deliver_async(rcpt.address, headers + data)
            except Exception as exc:
                results[rcpt.address] = self._failure(message, rcpt.address, exc)
        for address, future in pending.items():
            try:
                uid = (await future)[1]
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
