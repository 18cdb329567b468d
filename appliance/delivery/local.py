"""Local delivery for the primary role: queue -> the recipient's mailbox in the store (Maildir on disk).

The store's deliver() is the commit of this transaction: it returns only once the file is fsynced and renamed
into the mailbox and the index row is committed; only then is the recipient marked delivered in the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from appliance.delivery.client import RcptResult
from appliance.queue.spool import QueuedMessage, Recipient
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
        results: dict[str, RcptResult] = {}
        for rcpt in rcpts:
            results[rcpt.address] = await asyncio.to_thread(self._deliver_one, message, rcpt, data)
        return results

    def _deliver_one(self, message: QueuedMessage, rcpt: Recipient, data: bytes) -> RcptResult:
        # RFC 5321 §4.4: the delivering MTA records the envelope sender as Return-Path.
        headers = f"Return-Path: <{message.mail_from}>\r\nDelivered-To: {rcpt.address}\r\n".encode()
        try:
            if self._quota_of is not None:
                quota = self._quota_of(rcpt.address)
                if self._quota_set.get(rcpt.address) != quota:
                    self.store.set_quota(rcpt.address, quota)
                    self._quota_set[rcpt.address] = quota
            uid = self.store.deliver(rcpt.address, headers + data)
        except QuotaExceeded as exc:
            if exc.permanent:
                return RcptResult(552, "5.2.2", f"message larger than the mailbox quota of {rcpt.address}", None)
            return RcptResult(452, "4.2.2", f"mailbox {rcpt.address} is full", None)
        except (StoreError, OSError) as exc:
            log.error("queue_id=%s local delivery to %s failed: %s", message.queue_id, rcpt.address, exc)
            return RcptResult(451, "4.3.0", f"mailbox unavailable: {exc.__class__.__name__}", None)
        return RcptResult(250, "2.0.0", f"delivered to mailbox (uid {uid})", None)
