"""EXPUNGE and UID EXPUNGE (RFC 3501 §6.4.3, RFC 4315 §2.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Expunge
from appliance.imap.state import SELECTED

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("EXPUNGE", states=SELECTED)
async def expunge(session: Session, cmd: Expunge) -> None:
    assert session.view is not None and session.account is not None
    view = session.view
    if view.readonly:
        session.send(f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only")
        return
    uids = None
    if cmd.sequence is not None:
        uids = view.resolve(cmd.sequence, uid=True)
    session.account.expunge(view.name, uids)
    session.sync(allow_expunge=True)  # reports ours and anyone else's expunges
    session.send(f"{cmd.tag} OK Expunge completed.")
