"""The end of the pipeline: a message that passed every check goes to its delivery targets before the 250.

A target (as Maddy's delivery targets) is started for one message and then told its recipients, given the
body, and committed or aborted. ``commit`` is the durability point: when it returns, the recipients it took
are safe on disk; it returns those it could not take, for the next target. Two targets exist:

- the mailbox target (delivery/local.py): a message only for this host's own mailboxes is stored in them
  before the 250, as Mox and Maddy do (the store's commit is as durable as the spool's);
- the spool target (queue/target.py): everything else, and whatever a mailbox refused (full, store error),
  goes into the spool, to be delivered, retried or bounced by the queue;
- the quarantine target (quarantine/): a message a content check held (META_QUARANTINE in its meta) waits there,
  for all its recipients, until an administrator releases or deletes it.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable, Sequence
from typing import Protocol

from appliance.message.model import META_QUARANTINE, QueuedMessage, Recipient


class Delivery(Protocol):
    """One message in one target."""

    def add_recipient(self, recipient: Recipient) -> None: ...
    def body(self, data: bytes) -> None: ...
    async def commit(self) -> list[Recipient]:
        """Make the message durable for the recipients taken; return the recipients not taken. Raises OSError
        when nothing could be stored (the client gets a 4xx and sends again)."""
        ...

    def abort(self) -> None: ...


class Target(Protocol):
    def start(self, message: QueuedMessage) -> Delivery: ...


class BufferedDelivery:
    """A delivery that collects recipients and body and does its work in ``commit``: what both targets are,
    since the message is whole in memory by the end of DATA."""

    __slots__ = ("message", "recipients", "data")

    def __init__(self, message: QueuedMessage) -> None:
        self.message = message
        self.recipients: list[Recipient] = []
        self.data = b""

    def add_recipient(self, recipient: Recipient) -> None:
        self.recipients.append(recipient)

    def body(self, data: bytes) -> None:
        self.data = data

    async def commit(self) -> list[Recipient]:
        raise NotImplementedError

    def abort(self) -> None:
        """Nothing to undo: until commit nothing was written."""


class Intake:
    """Chooses the targets of a message: the mailboxes when every recipient is local, then the spool."""

    def __init__(self, spool: Target, mailboxes: Target | None = None,
                 is_local: Callable[[str], bool] | None = None, quarantine: Target | None = None) -> None:
        self._spool = spool
        self._mailboxes = mailboxes
        self._is_local = is_local
        self._quarantine = quarantine

    def reconfigure(self, mailboxes: Target | None, is_local: Callable[[str], bool] | None) -> None:
        """SIGHUP: the routing (which addresses are local) and the mailbox target follow the new config."""
        self._mailboxes = mailboxes
        self._is_local = is_local

    async def commit(self, message: QueuedMessage, data: bytes) -> None:
        """Every recipient of ``message`` is durable in some target when this returns (the 250 is then true)."""
        recipients = message.recipients
        if META_QUARANTINE in message.meta:
            # A content check held the message: it waits in the quarantine for an administrator's decision.
            if self._quarantine is None:
                raise OSError(errno.ENOENT, "a check asked for the quarantine, but this host keeps none")
            left = await _deliver(self._quarantine, message, recipients, data)
            if left:
                raise OSError(errno.EIO, f"the quarantine did not take {len(left)} recipient(s)")
            return
        mailboxes, is_local = self._mailboxes, self._is_local
        if mailboxes is not None and is_local is not None and recipients and all(
                is_local(r.address) for r in recipients):
            left = await _deliver(mailboxes, message, recipients, data)
            if not left:
                return
            message = dataclasses.replace(message, recipients=left)
        await _deliver(self._spool, message, message.recipients, data)


async def _deliver(target: Target, message: QueuedMessage, recipients: Sequence[Recipient],
                   data: bytes) -> list[Recipient]:
    delivery = target.start(message)
    try:
        for recipient in recipients:
            delivery.add_recipient(recipient)
        delivery.body(data)
        return await delivery.commit()
    except BaseException:
        delivery.abort()
        raise
