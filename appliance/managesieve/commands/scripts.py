"""The script commands (RFC 5804 §2.5-§2.10, §2.12): each user's scripts in the shared ``ScriptStore``.

Writes go through the store's atomic replace (temporary file, fsync, rename), in a thread so that an fsync does
not hold the event loop; reads (a directory listing, a file of at most ``sieve.max_script_size``) take tens of
microseconds and run inline, where a thread's round trip would cost more than they do. A script is stored only
once the Sieve checker accepts it, so that local delivery never finds one it cannot parse (RFC 5804 §2.6).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from appliance.managesieve import checker
from appliance.managesieve.commands.registry import AUTHENTICATED, command
from appliance.managesieve.parser import Command
from appliance.managesieve.response import (
    ACTIVE,
    ALREADYEXISTS,
    NONEXISTENT,
    QUOTA_MAXSCRIPTS,
    QUOTA_MAXSIZE,
    literal,
    status,
    string,
)
from appliance.sieve.storage import ScriptNotFound, check_name

if TYPE_CHECKING:
    from appliance.managesieve.session import Session

NO_SUCH_SCRIPT = "There is no script by that name"


def _user(session: Session) -> str:
    assert session.user is not None  # the registry lets these commands run only once authenticated
    return session.user


async def _quota(session: Session, name: str, size: int) -> bool:
    """True when ``size`` octets under ``name`` fit the limits; else the NO is sent (RFC 5804 §1.3 QUOTA)."""
    limits = session.limits
    if size > limits.max_script_size:
        session.send(status("NO", f"Script is larger than the limit of {limits.max_script_size} octets",
                            QUOTA_MAXSIZE))
        return False
    names = session.scripts.names(_user(session))
    if name not in names and len(names) >= limits.max_scripts:
        session.send(status("NO", f"You have the most scripts allowed ({limits.max_scripts})", QUOTA_MAXSCRIPTS))
        return False
    return True


@command("HAVESPACE", AUTHENTICATED)
async def havespace(session: Session, cmd: Command) -> None:
    name = check_name(cmd.args[0])
    if await _quota(session, name, cmd.number or 0):
        session.send(status("OK", "Putscript would succeed."))


@command("PUTSCRIPT", AUTHENTICATED)
async def putscript(session: Session, cmd: Command) -> None:
    name, text = check_name(cmd.args[0]), cmd.args[1]
    if not await _quota(session, name, len(text.encode("utf-8"))):
        return
    problem = checker.problem(text)
    if problem is not None:
        session.send(status("NO", problem))
        return
    await asyncio.to_thread(session.scripts.write, _user(session), name, text)
    session.send(status("OK", "Putscript completed."))


@command("CHECKSCRIPT", AUTHENTICATED)
async def checkscript(session: Session, cmd: Command) -> None:
    problem = checker.problem(cmd.args[0])
    session.send(status("NO", problem) if problem is not None else status("OK", "Script is valid."))


@command("LISTSCRIPTS", AUTHENTICATED)
async def listscripts(session: Session, cmd: Command) -> None:
    user = _user(session)
    names = session.scripts.names(user)
    active = session.scripts.active(user)
    for name in names:
        session.send(string(name) + (b" ACTIVE\r\n" if name == active else b"\r\n"))
    session.send(status("OK", "Listscripts completed."))


@command("SETACTIVE", AUTHENTICATED)
async def setactive(session: Session, cmd: Command) -> None:
    # RFC 5804 §2.8: the empty name deactivates every script
    name = check_name(cmd.args[0]) if cmd.args[0] else None
    try:
        await asyncio.to_thread(session.scripts.activate, _user(session), name)
    except ScriptNotFound:
        session.send(status("NO", NO_SUCH_SCRIPT, NONEXISTENT))
        return
    session.send(status("OK", "Setactive completed."))


@command("GETSCRIPT", AUTHENTICATED)
async def getscript(session: Session, cmd: Command) -> None:
    try:
        text = session.scripts.read(_user(session), check_name(cmd.args[0]))
    except ScriptNotFound:
        session.send(status("NO", NO_SUCH_SCRIPT, NONEXISTENT))
        return
    session.send(literal(text) + b"\r\n")
    session.send(status("OK", "Getscript completed."))


@command("DELETESCRIPT", AUTHENTICATED)
async def deletescript(session: Session, cmd: Command) -> None:
    user, name = _user(session), check_name(cmd.args[0])
    # RFC 5804 §2.10: the active script cannot be deleted
    if session.scripts.active(user) == name:
        session.send(status("NO", "You may not delete an active script", ACTIVE))
        return
    try:
        await asyncio.to_thread(session.scripts.delete, user, name)
    except ScriptNotFound:
        session.send(status("NO", NO_SUCH_SCRIPT, NONEXISTENT))
        return
    session.send(status("OK", "Deletescript completed."))


@command("RENAMESCRIPT", AUTHENTICATED)
async def renamescript(session: Session, cmd: Command) -> None:
    user, old, new = _user(session), check_name(cmd.args[0]), check_name(cmd.args[1])
    names = session.scripts.names(user)
    if old not in names:
        session.send(status("NO", NO_SUCH_SCRIPT, NONEXISTENT))
        return
    if new in names:
        session.send(status("NO", "A script with that name already exists", ALREADYEXISTS))
        return
    try:
        await asyncio.to_thread(session.scripts.rename, user, old, new)
    except ScriptNotFound:
        session.send(status("NO", NO_SUCH_SCRIPT, NONEXISTENT))
        return
    session.send(status("OK", "Renamescript completed."))
