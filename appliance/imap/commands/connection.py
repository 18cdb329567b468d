"""CAPABILITY, LOGOUT and ID: commands about the connection itself, valid in any state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Command, IdCommand
from appliance.imap.state import ANY_STATE, State

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("CAPABILITY", states=ANY_STATE)
async def capability(session: Session, cmd: Command) -> None:
    session.send(f"* CAPABILITY {session.capabilities()}")
    session.send(f"{cmd.tag} OK Capability completed.")


@command("LOGOUT", states=ANY_STATE)
async def logout(session: Session, cmd: Command) -> None:
    session.send("* BYE Logging out")
    session.send(f"{cmd.tag} OK Logout completed.")
    session.state = State.LOGOUT


@command("ID", states=ANY_STATE)
async def id_(session: Session, cmd: IdCommand) -> None:
    # RFC 2971
    session.send('* ID ("name" "Mailfleet" "vendor" "Mailfleet")')
    session.send(f"{cmd.tag} OK ID completed.")
