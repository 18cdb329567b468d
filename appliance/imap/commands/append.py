"""APPEND (RFC 3501 §6.3.11), answered with APPENDUID (UIDPLUS, RFC 4315)."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Append
from appliance.imap.response import as_wire
from appliance.imap.state import AUTHENTICATED
from appliance.imap.view import valid_flag
from appliance.store import FolderNotFound, QuotaExceeded

if TYPE_CHECKING:
    from appliance.imap.session import Session

_BARE_LF = re.compile(rb"(?<!\r)\n")


@command("APPEND", states=AUTHENTICATED)
async def append(session: Session, cmd: Append) -> None:
    assert session.account is not None
    if not cmd.message:
        session.send(f"{cmd.tag} NO Can't save a zero byte message.")
        return
    for flag in cmd.flags:
        if not valid_flag(flag):
            session.send(f"{cmd.tag} BAD Invalid system flag {flag}")
            return
    try:
        validity, uid = await asyncio.to_thread(
            session.account.deliver, cmd.mailbox, _crlf(cmd.message), cmd.flags, cmd.date)
    except FolderNotFound:
        session.send(f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't exist: {as_wire(cmd.mailbox)}")
        return
    except QuotaExceeded:
        session.send(f"{cmd.tag} NO [OVERQUOTA] Quota exceeded (mailbox for user is full)")
        return
    session.sync(allow_expunge=True)
    session.send(f"{cmd.tag} OK [APPENDUID {validity} {uid}] Append completed.")


def _crlf(message: bytes) -> bytes:
    """Bare LF line ends become CRLF (RFC 3501 §2.2: messages are CRLF; Dovecot serves them so too),
    so that RFC822.SIZE, BODY[] and every section agree with what clients expect."""
    return _BARE_LF.sub(b"\r\n", message) if b"\n" in message else message
