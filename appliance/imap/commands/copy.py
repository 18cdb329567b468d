"""COPY and MOVE, plain and UID (RFC 3501 §6.4.7, RFC 6851), answered with COPYUID (RFC 4315)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import CopyMove
from appliance.imap.response import as_wire, compress
from appliance.imap.state import SELECTED
from appliance.store import FolderNotFound, QuotaExceeded

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("COPY", states=SELECTED)
async def copy(session: Session, cmd: CopyMove) -> None:
    _copy(session, cmd, move=False)


@command("MOVE", states=SELECTED)
async def move(session: Session, cmd: CopyMove) -> None:
    _copy(session, cmd, move=True)


def _copy(session: Session, cmd: CopyMove, move: bool) -> None:
    assert session.view is not None and session.account is not None
    view = session.view
    account = session.account
    if move and view.readonly:
        session.send(f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only")
        return
    session.sync(allow_expunge=cmd.uid or move, uid_fetch=cmd.uid)
    if session.view is not view:  # the sync found the mailbox deleted or recreated and said BYE
        session.send(f"{cmd.tag} NO Selected mailbox no longer exists.")
        return
    uids = view.resolve(cmd.sequence, cmd.uid)
    try:
        account.folder(cmd.mailbox)
    except FolderNotFound:
        session.send(f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't exist: {as_wire(cmd.mailbox)}")
        return
    try:
        if move:  # also into the selected mailbox itself: new UIDs, old ones expunged (as Dovecot)
            validity, pairs = account.move(view.name, uids, cmd.mailbox)
        else:
            validity, pairs = account.copy(view.name, uids, cmd.mailbox)
    except QuotaExceeded:
        session.send(f"{cmd.tag} NO [OVERQUOTA] Quota exceeded (mailbox for user is full)")
        return
    code = ""
    if pairs:
        code = f"[COPYUID {validity} {compress([p[0] for p in pairs])} {compress([p[1] for p in pairs])}] "
    if move:
        if code:
            session.send(f"* OK {code}Moved UIDs.")  # RFC 6851 §4.3
        session.sync(allow_expunge=True)
        session.send(f"{cmd.tag} OK Move completed.")
        return
    session.sync(allow_expunge=cmd.uid)
    session.send(f"{cmd.tag} OK {code}Copy completed.")
