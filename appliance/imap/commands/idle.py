"""IDLE (RFC 2177): report the selected mailbox's changes as they happen, until the client's DONE.

Changes made in this process wake the wait at once (``view.ChangeWatch``); those of other
processes are found by a poll every ``IDLE_POLL`` seconds."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Command
from appliance.imap.state import AUTHENTICATED
from appliance.imap.wire import TIMEOUT_AUTH, Disconnect

if TYPE_CHECKING:
    from appliance.imap.session import Session

IDLE_POLL = 2.0  # seconds between polls for other processes' changes during IDLE


@command("IDLE", states=AUTHENTICATED)
async def idle(session: Session, cmd: Command) -> None:
    wire = session.wire
    changed = session.watch.changed
    session.sync(allow_expunge=True)
    await wire.continuation("idling")
    line_task = wire.next_line()
    deadline = time.monotonic() + TIMEOUT_AUTH
    try:
        while True:
            changed.clear()
            waiter = asyncio.ensure_future(changed.wait())
            done, _ = await asyncio.wait({line_task, waiter}, timeout=IDLE_POLL,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if line_task in done:
                break
            if time.monotonic() > deadline:
                session.send("* BYE Disconnected for inactivity")
                await wire.flush()
                raise Disconnect
            session.sync(allow_expunge=True)
            await wire.flush()
        try:
            line = line_task.result()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise Disconnect from None
    finally:
        if not line_task.done():
            line_task.cancel()
    if line.strip().upper() != b"DONE":
        session.send(f"{cmd.tag} BAD Expected DONE")
        return
    session.sync(allow_expunge=True)
    session.send(f"{cmd.tag} OK Idle completed.")
