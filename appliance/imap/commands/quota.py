"""GETQUOTAROOT, GETQUOTA and SETQUOTA (RFC 9208): one quota root "" per account."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.mailboxes import no_such_mailbox
from appliance.imap.commands.registry import command
from appliance.imap.parser import QuotaCommand
from appliance.imap.response import mailbox_name
from appliance.imap.state import AUTHENTICATED
from appliance.store import FolderNotFound

if TYPE_CHECKING:
    from appliance.imap.session import Session


def _quota_line(session: Session) -> str | None:
    """The account's one quota root "" in 1024-octet units; None when the account is unlimited."""
    assert session.account is not None
    used, limit = session.account.quota()
    if not limit:
        return None
    return f'* QUOTA "" (STORAGE {(used + 1023) // 1024} {limit // 1024})'


@command("GETQUOTAROOT", states=AUTHENTICATED)
async def getquotaroot(session: Session, cmd: QuotaCommand) -> None:
    assert session.account is not None
    try:
        name = session.account.folder(cmd.target).name
    except FolderNotFound:
        no_such_mailbox(session, cmd.tag, cmd.target)
        return
    line = _quota_line(session)
    session.send(f"* QUOTAROOT {mailbox_name(name)}" + (' ""' if line else ""))
    if line:
        session.send(line)
    session.send(f"{cmd.tag} OK Getquotaroot completed.")


@command("GETQUOTA", states=AUTHENTICATED)
async def getquota(session: Session, cmd: QuotaCommand) -> None:
    line = _quota_line(session)
    if cmd.target != "" or line is None:
        session.send(f"{cmd.tag} NO [NONEXISTENT] Quota root doesn't exist.")
        return
    session.send(line)
    session.send(f"{cmd.tag} OK Getquota completed.")


@command("SETQUOTA", states=AUTHENTICATED)
async def setquota(session: Session, cmd: QuotaCommand) -> None:
    # quotas are the administrator's: `mailfleet user quota` (RFC 9208 §4.3 allows refusing)
    session.send(f"{cmd.tag} NO [NOPERM] Quotas are set by the administrator.")
