"""LIST / LSUB (RFC 3501 §6.3.8-9, LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819) and STATUS (§6.3.10)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap import listing
from appliance.imap.commands.mailboxes import no_such_mailbox
from appliance.imap.commands.registry import command
from appliance.imap.parser import ListCommand, Status
from appliance.imap.response import mailbox_name
from appliance.imap.state import AUTHENTICATED
from appliance.store import DELIMITER, FolderNotFound
from appliance.store.extensions import mailbox_id

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("LIST", states=AUTHENTICATED)
async def list_(session: Session, cmd: ListCommand) -> None:
    _list(session, cmd, lsub=False)


@command("LSUB", states=AUTHENTICATED)
async def lsub(session: Session, cmd: ListCommand) -> None:
    _list(session, cmd, lsub=True)


def _list(session: Session, cmd: ListCommand, lsub: bool) -> None:
    assert session.account is not None
    if len(cmd.patterns) == 1 and cmd.patterns[0] == "" and not cmd.extended:
        # RFC 3501 §6.3.8: empty pattern -> hierarchy delimiter and root
        session.send(f'* {cmd.name} (\\Noselect) "{DELIMITER}" ""')
        session.send(f"{cmd.tag} OK {cmd.name.title()} completed.")
        return
    problem = listing.options_problem(cmd)
    if problem:
        session.send(f"{cmd.tag} BAD {problem}")
        return
    folders = {f.name: f for f in session.account.folders()}
    status_items = sorted(r[7:] for r in cmd.returns if r.startswith("STATUS:"))
    for name, attrs, suffix in listing.entries(cmd, lsub, folders, set(session.account.subscriptions())):
        session.send(f'* {cmd.name} ({" ".join(attrs)}) "{DELIMITER}" {mailbox_name(name)}{suffix}')
        if status_items and name in folders:
            send_status(session, name, status_items)
    session.send(f"{cmd.tag} OK {cmd.name.title()} completed.")


@command("STATUS", states=AUTHENTICATED)
async def status(session: Session, cmd: Status) -> None:
    assert session.account is not None
    try:
        session.account.folder(cmd.mailbox)
    except FolderNotFound:
        no_such_mailbox(session, cmd.tag, cmd.mailbox)
        return
    send_status(session, cmd.mailbox, list(cmd.items))
    session.send(f"{cmd.tag} OK Status completed.")


def send_status(session: Session, name: str, items: list[str]) -> None:
    assert session.account is not None
    account = session.account
    status = account.status(name)
    values: dict[str, int | str] = {"MESSAGES": status.messages, "RECENT": status.recent, "UIDNEXT": status.uidnext,
              "UIDVALIDITY": status.uidvalidity, "UNSEEN": status.unseen, "SIZE": status.size,
              "HIGHESTMODSEQ": status.highestmodseq}
    values["MAILBOXID"] = f"({mailbox_id(status.uidvalidity)})"  # RFC 8474 §4.3
    if "DELETED" in items:  # RFC 9051 §6.3.11: messages flagged \Deleted
        values["DELETED"] = sum("\\Deleted" in flags for _, flags in account.flag_list(name))
    view = session.view
    if view is not None and view.name == account.folder(name).name:
        values["RECENT"] = len(view.recent) + status.recent
    order = list(values)  # a fixed order, whatever the request's (as Dovecot)
    body = " ".join(f"{item} {values[item]}" for item in sorted(set(items), key=order.index))
    session.send(f"* STATUS {mailbox_name(account.folder(name).name)} ({body})")
