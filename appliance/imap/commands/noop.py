"""NOOP and CHECK: both only report the selected mailbox's changes (RFC 3501 §6.1.2, §6.4.1).

Every store change is durable when it is made, so CHECK has no checkpoint of its own to take."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Command
from appliance.imap.state import ANY_STATE, SELECTED

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("NOOP", states=ANY_STATE)
async def noop(session: Session, cmd: Command) -> None:
    session.sync(allow_expunge=True)
    session.send(f"{cmd.tag} OK NOOP completed.")


@command("CHECK", states=SELECTED)
async def check(session: Session, cmd: Command) -> None:
    session.sync(allow_expunge=True)
    session.send(f"{cmd.tag} OK Check completed.")
