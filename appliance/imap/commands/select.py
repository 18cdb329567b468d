"""SELECT / EXAMINE (RFC 3501 §6.3.1-2, with CONDSTORE and QRESYNC, RFC 7162), CLOSE and UNSELECT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.mailboxes import no_such_mailbox
from appliance.imap.commands.registry import command
from appliance.imap.parser import Command, Select
from appliance.imap.state import AUTHENTICATED, SELECTED
from appliance.imap.view import View
from appliance.store import FolderNotFound
from appliance.store.extensions import mailbox_id

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("SELECT", states=AUTHENTICATED)
async def select(session: Session, cmd: Select) -> None:
    _select(session, cmd, readonly=False)


@command("EXAMINE", states=AUTHENTICATED)
async def examine(session: Session, cmd: Select) -> None:
    _select(session, cmd, readonly=True)


def _select(session: Session, cmd: Select, readonly: bool) -> None:
    assert session.account is not None
    if cmd.qresync is not None and not session.qresync:
        session.send(f"{cmd.tag} BAD QRESYNC is not enabled")  # RFC 7162 §3.2.5: ENABLE QRESYNC first
        return
    if session.view is not None:
        session.send("* OK [CLOSED] Previous mailbox closed.")  # RFC 7162 §3.2.11
    session.deselect()
    try:
        info = session.account.folder(cmd.mailbox)
    except FolderNotFound:
        no_such_mailbox(session, cmd.tag, cmd.mailbox)
        return
    if cmd.condstore:
        session.condstore = True
    view = View.open(session.account, info, readonly, session.send)
    if session.imap4rev2:
        view.hide_recent()
    view.send_flags(permanent=True)
    session.send(f"* {len(view.uids)} EXISTS")
    if not session.imap4rev2:  # RFC 9051 appendix E: RECENT is gone
        session.send(f"* {len(view.recent)} RECENT")
    first_unseen = view.first_unseen()
    if first_unseen is not None:
        session.send(f"* OK [UNSEEN {first_unseen}] First unseen.")
    session.send(f"* OK [UIDVALIDITY {info.uidvalidity}] UIDs valid")
    # a message delivered between reading the folder and its messages is in EXISTS: UIDNEXT passes it
    session.send(f"* OK [UIDNEXT {max(info.uidnext, view.high + 1)}] Predicted next UID")
    session.send(f"* OK [HIGHESTMODSEQ {info.highestmodseq}] Highest")
    session.send(f"* OK [MAILBOXID ({mailbox_id(info.uidvalidity)})] Ok")  # RFC 8474 §4.2
    session.select(view)
    if cmd.qresync is not None and cmd.qresync[0] == info.uidvalidity:
        view.qresync_report(cmd.qresync[1], cmd.qresync[2])
    mode = "READ-ONLY" if readonly else "READ-WRITE"
    session.send(f"{cmd.tag} OK [{mode}] {'Examine' if readonly else 'Select'} completed.")


@command("CLOSE", states=SELECTED)
async def close(session: Session, cmd: Command) -> None:
    assert session.view is not None and session.account is not None
    if not session.view.readonly:
        session.account.expunge(session.view.name)  # RFC 3501 §6.4.2: silently, no EXPUNGE responses
    session.deselect()
    session.send(f"{cmd.tag} OK Close completed.")


@command("UNSELECT", states=SELECTED)
async def unselect(session: Session, cmd: Command) -> None:
    # RFC 3691: as CLOSE, without the expunge
    session.deselect()
    session.send(f"{cmd.tag} OK Unselect completed.")
