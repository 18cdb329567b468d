"""The spool as a delivery target of the intake (pipeline/intake.py): the message is committed to the spool
and handed to the queue, which delivers, retries or bounces it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from appliance.message.model import QueuedMessage, Recipient
from appliance.queue.spool import Spool

# Told of every message the spool has committed, with the envelope as written: the queue runner in one
# process, the notice to the queue process in an acceptor.
Committed = Callable[[QueuedMessage, bytes], None]


class SpoolTarget:
    def __init__(self, spool: Spool, committed: Committed) -> None:
        self._spool = spool
        self._committed = committed

    def start(self, message: QueuedMessage) -> SpoolDelivery:
        return SpoolDelivery(self._spool, self._committed, message)


class SpoolDelivery:
    __slots__ = ("_spool", "_committed", "_message", "_recipients", "_data")

    def __init__(self, spool: Spool, committed: Committed, message: QueuedMessage) -> None:
        self._spool = spool
        self._committed = committed
        self._message = message
        self._recipients: list[Recipient] = []
        self._data = b""

    def add_recipient(self, recipient: Recipient) -> None:
        self._recipients.append(recipient)

    def body(self, data: bytes) -> None:
        self._data = data

    async def commit(self) -> list[Recipient]:
        """Spool.commit is the durability point: the file is complete and flushed when it returns."""
        message = self._message
        if len(self._recipients) != len(message.recipients) or any(
                a is not b for a, b in zip(self._recipients, message.recipients, strict=True)):
            message = dataclasses.replace(message, recipients=self._recipients)
        envelope = await self._spool.commit(message, self._data)
        self._committed(message, envelope)
        return []

    def abort(self) -> None:
        """Nothing to undo: a write that failed removed its own partial file (Spool.write)."""
