"""APPEND (RFC 3501 §6.3.11), answered with APPENDUID (UIDPLUS, RFC 4315), with MULTIAPPEND (RFC 3502),
literal8 messages (BINARY, RFC 3516 §4.4) and the announced APPENDLIMIT (RFC 7889)."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Append, AppendMessage
from appliance.imap.response import as_wire, compress
from appliance.imap.state import AUTHENTICATED
from appliance.imap.view import valid_flag
from appliance.imap.wire import MAX_LITERAL
from appliance.store import Account, FolderNotFound, QuotaExceeded
from appliance.store.staging import Delivery

if TYPE_CHECKING:
    from appliance.imap.session import Session

_BARE_LF = re.compile(rb"(?<!\r)\n")
APPENDLIMIT = MAX_LITERAL  # RFC 7889: the largest message APPEND accepts (the wire refuses a larger literal)


@command("APPEND", states=AUTHENTICATED)
async def append(session: Session, cmd: Append) -> None:
    assert session.account is not None
    messages = [AppendMessage(cmd.flags, cmd.date, cmd.message, cmd.binary), *cmd.more]
    for message in messages:
        problem = _refusal(message)
        if problem:
            session.send(f"{cmd.tag} {problem}")
            return
    items = [Delivery(cmd.mailbox, _crlf(m.message), tuple(m.flags), m.date) for m in messages]
    try:
        validity, uids = await asyncio.to_thread(deliver_all, session.account, items)
    except FolderNotFound:
        session.send(f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't exist: {as_wire(cmd.mailbox)}")
        return
    except QuotaExceeded:
        session.send(f"{cmd.tag} NO [OVERQUOTA] Quota exceeded (mailbox for user is full)")
        return
    session.sync(allow_expunge=True)
    session.send(f"{cmd.tag} OK [APPENDUID {validity} {compress(uids)}] Append completed.")


def _refusal(message: AppendMessage) -> str | None:
    """The tagged NO/BAD text for a message APPEND must refuse, else None."""
    if not message.message:
        return "NO Can't save a zero byte message."
    if len(message.message) > APPENDLIMIT:  # a LITERAL+ literal the wire could not refuse in advance
        return f"NO [TOOBIG] Message larger than APPENDLIMIT {APPENDLIMIT}"
    if not message.binary and b"\x00" in message.message:
        return "NO Message contains NUL octets: send it as a literal8 (~{n}, RFC 3516)"
    for flag in message.flags:
        if not valid_flag(flag):
            return f"BAD Invalid system flag {flag}"
    return None


def deliver_all(account: Account, items: list[Delivery]) -> tuple[int, list[int]]:
    """Store every message or none (RFC 3502 §3: MULTIAPPEND is atomic); returns (UIDVALIDITY, UIDs).

    The store's batch delivery stores what it can; so the whole batch is checked first (folder, total size
    against the quota), and should one message fail all the same (a disk error, a delivery by another
    process filling the quota meanwhile), the ones stored are removed again before the NO."""
    if len(items) == 1:
        validity, uid = account.deliver(items[0].folder, items[0].data, items[0].flags, items[0].internal_date)
        return validity, [uid]
    info = account.folder(items[0].folder)  # FolderNotFound before anything is written
    used, quota = account.quota()
    total = sum(len(item.data) for item in items)
    if quota and used + total > quota:
        raise QuotaExceeded(account.address, used, quota, total)
    results = account.deliver_batch(items)
    stored = [r[1] for r in results if isinstance(r, tuple)]
    failure = next((r for r in results if isinstance(r, Exception)), None)
    if failure is not None:
        if stored:
            account.delete_messages(info.name, stored)
        raise failure
    first = results[0]
    assert isinstance(first, tuple)
    return first[0], stored


def _crlf(message: bytes) -> bytes:
    """Bare LF line ends become CRLF (RFC 3501 §2.2: messages are CRLF; Dovecot serves them so too),
    so that RFC822.SIZE, BODY[] and every section agree with what clients expect."""
    return _BARE_LF.sub(b"\r\n", message) if b"\n" in message else message
