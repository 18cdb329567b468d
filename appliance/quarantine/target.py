"""The quarantine as a delivery target of the intake (pipeline/intake.py): a message a content check held is
stored here, for every recipient, before the 250, and waits for ``mailfleet quarantine release|delete``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from appliance.message.model import META_QUARANTINE, QueuedMessage, Recipient
from appliance.pipeline.intake import BufferedDelivery
from appliance.quarantine.store import Quarantine, verdict_reason

log = logging.getLogger("appliance.quarantine")


class QuarantineTarget:
    def __init__(self, quarantine: Quarantine) -> None:
        self._quarantine = quarantine

    def start(self, message: QueuedMessage) -> QuarantineDelivery:
        return QuarantineDelivery(self._quarantine, message)


class QuarantineDelivery(BufferedDelivery):
    __slots__ = ("_quarantine",)

    def __init__(self, quarantine: Quarantine, message: QueuedMessage) -> None:
        super().__init__(message)
        self._quarantine = quarantine

    async def commit(self) -> list[Recipient]:
        """``Quarantine.put`` is the durability point (file and directory fsynced), on a thread: the event loop
        goes on serving other sessions meanwhile. Every recipient is taken; an OSError reaches the SMTP handler,
        which answers 4xx."""
        message = dataclasses.replace(self.message, recipients=self.recipients)
        await asyncio.to_thread(self._quarantine.put, message, self.data)
        log.info("queue_id=%s quarantined: from=<%s> rcpts=%d reason=%s", message.queue_id, message.mail_from,
                 len(message.recipients), verdict_reason(message.meta.get(META_QUARANTINE)))
        return []
