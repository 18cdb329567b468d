"""CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE and NAMESPACE (RFC 3501 §6.3, RFC 2342, RFC 6154)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Command, MailboxCommand, Rename
from appliance.imap.response import as_wire
from appliance.imap.state import AUTHENTICATED
from appliance.store import DELIMITER, Account, FolderExists, FolderNotFound, InvalidFolderName
from appliance.store.extensions import mailbox_id as mailbox_id_of

if TYPE_CHECKING:
    from appliance.imap.session import Session

SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")


def no_such_mailbox(session: Session, tag: str, name: str) -> None:
    """NO for a missing mailbox; a parent that exists only through children is "not selectable".

    A name in human text goes out as its UTF-8 bytes (``as_wire``), as Dovecot sends it."""
    assert session.account is not None
    if any(f.name.startswith(name + DELIMITER) for f in session.account.folders()):
        session.send(f"{tag} NO Mailbox isn't selectable: {as_wire(name)}")
    else:
        session.send(f"{tag} NO Mailbox doesn't exist: {as_wire(name)}")  # no [NONEXISTENT] here, as Dovecot


@command("NAMESPACE", states=AUTHENTICATED)
async def namespace(session: Session, cmd: Command) -> None:
    session.send(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL')
    session.send(f"{cmd.tag} OK Namespace completed.")


@command("CREATE", states=AUTHENTICATED)
async def create(session: Session, cmd: MailboxCommand) -> None:
    assert session.account is not None
    name = cmd.mailbox.rstrip(DELIMITER)  # RFC 3501 §6.3.3: trailing delimiter = will have children
    special = None
    for use in cmd.use:
        if use not in SPECIAL_USES:
            session.send(f"{cmd.tag} NO [USEATTR] Unsupported special-use attribute {use}")
            return
        special = use
    if name.upper() == "INBOX" or _exists(session.account, name):
        session.send(f"{cmd.tag} NO [ALREADYEXISTS] Mailbox already exists")
        return
    try:
        session.account.create_folder(name, special)
    except FolderExists:
        session.send(f"{cmd.tag} NO [ALREADYEXISTS] Mailbox already exists")
        return
    except InvalidFolderName as exc:
        session.send(f"{cmd.tag} NO [CANNOT] {as_wire(str(exc))}")
        return
    mailbox_id = mailbox_id_of(session.account.folder(name).uidvalidity)
    session.send(f"{cmd.tag} OK [MAILBOXID ({mailbox_id})] Create completed.")  # RFC 8474 §4.1


@command("DELETE", states=AUTHENTICATED)
async def delete(session: Session, cmd: MailboxCommand) -> None:
    assert session.account is not None
    if cmd.mailbox.upper() == "INBOX":
        session.send(f"{cmd.tag} NO INBOX can't be deleted.")
        return
    try:
        session.account.delete_folder(cmd.mailbox)
    except FolderNotFound:
        session.send(f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't exist: {as_wire(cmd.mailbox)}")
        return
    except InvalidFolderName as exc:
        session.send(f"{cmd.tag} NO [CANNOT] {as_wire(str(exc))}")
        return
    if session.view is not None and session.view.name == cmd.mailbox:
        session.deselect()
    session.send(f"{cmd.tag} OK Delete completed.")


@command("RENAME", states=AUTHENTICATED)
async def rename(session: Session, cmd: Rename) -> None:
    assert session.account is not None
    try:
        session.account.rename_folder(cmd.old, cmd.new.rstrip(DELIMITER))
    except FolderNotFound:
        session.send(f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't exist: {as_wire(cmd.old)}")
        return
    except FolderExists:
        session.send(f"{cmd.tag} NO [ALREADYEXISTS] Target mailbox already exists")
        return
    except InvalidFolderName as exc:
        session.send(f"{cmd.tag} NO [CANNOT] {as_wire(str(exc))}")
        return
    session.send(f"{cmd.tag} OK Rename completed.")


@command("SUBSCRIBE", states=AUTHENTICATED)
async def subscribe(session: Session, cmd: MailboxCommand) -> None:
    _subscription(session, cmd, True)


@command("UNSUBSCRIBE", states=AUTHENTICATED)
async def unsubscribe(session: Session, cmd: MailboxCommand) -> None:
    _subscription(session, cmd, False)


def _subscription(session: Session, cmd: MailboxCommand, subscribed: bool) -> None:
    """SUBSCRIBE needs an existing mailbox (RFC 3501 §6.3.6 allows either; clients such as
    imapclient's tests expect NO, as Dovecot answers); UNSUBSCRIBE of any name is OK, so that a
    name left subscribed by a deleted mailbox can still be dropped (§6.3.9)."""
    assert session.account is not None
    if subscribed and not _exists(session.account, cmd.mailbox):
        session.send(f"{cmd.tag} NO Mailbox doesn't exist: {as_wire(cmd.mailbox)}")
        return
    try:
        session.account.set_subscribed(cmd.mailbox, subscribed)
    except FolderNotFound:
        session.send(f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't exist: {as_wire(cmd.mailbox)}")
        return
    session.send(f"{cmd.tag} OK {'Subscribe' if subscribed else 'Unsubscribe'} completed.")


def _exists(account: Account, name: str) -> bool:
    try:
        account.folder(name)
        return True
    except FolderNotFound:
        return False
