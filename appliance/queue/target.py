"""The spool as a delivery target of the intake (pipeline/intake.py): the message is committed to the spool
and handed to the queue, which delivers, retries or bounces it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from appliance.message.model import QueuedMessage, Recipient
from appliance.pipeline.intake import BufferedDelivery
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


class SpoolDelivery(BufferedDelivery):
    __slots__ = ("_spool", "_committed")

    def __init__(self, spool: Spool, committed: Committed, message: QueuedMessage) -> None:
        super().__init__(message)
        self._spool = spool
        self._committed = committed

    async def commit(self) -> list[Recipient]:
        """Spool.commit is the durability point: the file is complete and flushed when it returns."""
        message = self.message
        if len(self.recipients) != len(message.recipients) or any(
                a is not b for a, b in zip(self.recipients, message.recipients, strict=True)):
            message = dataclasses.replace(message, recipients=self.recipients)
        envelope = await self._spool.commit(message, self.data)
        self._committed(message, envelope)
        return []
