"""Carrying out what a recipient's Sieve scripts decided (appliance/sieve decides, this module acts).

Order and durability: the folders first (each a store commit), then what leaves as new mail (redirects, the
vacation reply, a rejection's DSN; each a spool commit through ``submit``). Each action is recorded in the Sieve
state right after its own commit, and a retry of the same queued message skips what is recorded: a crash
between a commit and its record repeats that one action (a second copy, never a lost one); a failure of the
store or the spool answers 451 and the queue retries the rest.

RFC 5429 §2.1 and the brief of issue 18: a rejection at delivery from the queue is a DSN to the sender, except
when the sender is the null one or failed SPF/DMARC here (our Authentication-Results says so): then the message
is discarded and the log says why, since a DSN would be backscatter to a forged address.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from appliance.delivery.client import RcptResult
from appliance.delivery.dsn import build_dsn
from appliance.message.model import QueuedMessage, Recipient
from appliance.sieve.engine import SieveEngine
from appliance.sieve.interpreter import FileInto, Redirect, Reject, Vacation
from appliance.sieve.mail import MailView
from appliance.sieve.vacation import build_reply, refusal
from appliance.store import MailStore
from appliance.store.errors import FolderExists, FolderNotFound, InvalidFolderName
from appliance.store.messages import SYSTEM_FLAGS, normalise_flag

log = logging.getLogger("appliance.sieve")


class Submit(Protocol):
    """Commit a new message to the spool (durable when it returns); service/root.py provides it."""

    def __call__(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> Awaitable[None]: ...


SenderFor = Callable[[str, str, str], str]  # (mail_from, user, new recipient) -> envelope sender (SRS)
_KEYWORD = re.compile(r"^[^\x00-\x20\x7f(){%*\"\\\]]+$")  # an IMAP atom (RFC 3501 §9 flag-keyword)
_AUTH_RESULTS_FAIL = re.compile(r"\b(spf|dmarc)\s*=\s*fail\b", re.IGNORECASE)


def imap_flags(flags: Sequence[str]) -> tuple[str, ...]:
    """The flags a store accepts: system flags in their case (not \\Recent), keywords that are IMAP atoms."""
    out = []
    for flag in flags:
        if flag.startswith("\\"):
            flag = normalise_flag(flag)
            if flag in SYSTEM_FLAGS and flag != "\\Recent":
                out.append(flag)
        elif _KEYWORD.match(flag):
            out.append(flag)
    return tuple(out)


class SieveActions:
    def __init__(self, engine: SieveEngine, store: MailStore, hostname: str, submit: Submit | None,
                 sender_for: SenderFor | None = None) -> None:
        self.engine = engine
        self.store = store
        self.hostname = hostname
        self.submit = submit
        self.sender_for = sender_for

    def applies(self, address: str) -> bool:
        return self.engine.applies(address)

    async def deliver(self, message: QueuedMessage, rcpt: Recipient, copy: bytes, folder: str) -> RcptResult:
        """Run the scripts for ``rcpt`` and carry out their actions; ``folder`` is the implicit keep's (INBOX,
        or a content check's Junk). Store or spool failures raise (the caller answers 451)."""
        address = rcpt.address
        view = MailView(copy, message.mail_from, address, rcpt.original or address)
        evaluation = await asyncio.to_thread(self.engine.evaluate, address, view, datetime.now(UTC),
                                             lambda name: self._folder_exists(address, name))
        if evaluation.error is not None:
            log.warning("queue_id=%s user=%s sieve failed, delivering into INBOX: %s", message.queue_id, address,
                        evaluation.error)
        done = await asyncio.to_thread(self.engine.state.done, message.queue_id, address)
        said: list[str] = []
        for action in evaluation.outcome.final():
            key = _key(action)
            if key in done:
                said.append(f"{key} (done before)")
                continue
            said.append(await self._carry_out(action, message, rcpt, view, copy, folder))
            await asyncio.to_thread(self.engine.state.record, message.queue_id, address, key)
        if not said:
            said.append("discarded")
        text = "sieve: " + "; ".join(said)
        log.info("queue_id=%s user=%s %s", message.queue_id, address, text)
        return RcptResult(250, "2.0.0", text, None)

    async def _carry_out(self, action: FileInto | Redirect | Reject | Vacation, message: QueuedMessage,
                         rcpt: Recipient, view: MailView, copy: bytes, keep_folder: str) -> str:
        if isinstance(action, FileInto):
            target = keep_folder if action.folder.upper() == "INBOX" else action.folder
            return await self._file(message, rcpt.address, copy, target, action)
        if isinstance(action, Redirect):
            return await self._redirect(message, rcpt, copy, action.address)
        if isinstance(action, Reject):
            return await self._reject(message, rcpt, view, action)
        return await self._vacation(message, rcpt, view, action)

    def _folder_exists(self, address: str, name: str) -> bool:
        try:
            self.store.account(address).folder(name)
        except (FolderNotFound, InvalidFolderName):
            return False
        return True

    async def _file(self, message: QueuedMessage, address: str, copy: bytes, folder: str, action: FileInto) -> str:
        flags = imap_flags(action.flags)
        try:
            uid = (await self.store.deliver_async(address, copy, folder, flags))[1]
        except (FolderNotFound, InvalidFolderName) as exc:
            if not action.create or isinstance(exc, InvalidFolderName):
                log.info("queue_id=%s user=%s sieve: no folder %r (fileinto without :create); into INBOX",
                         message.queue_id, address, folder)
                uid = (await self.store.deliver_async(address, copy, "INBOX", flags))[1]
                return f"fileinto {folder!r} missing, INBOX uid {uid}"
            try:  # RFC 5490 §3.2: :create makes the folder first
                await asyncio.to_thread(self.store.account(address).create_folder, folder)
            except FolderExists:
                pass  # made meanwhile by another delivery or session
            uid = (await self.store.deliver_async(address, copy, folder, flags))[1]
        return f"{folder} uid {uid}"

    async def _redirect(self, message: QueuedMessage, rcpt: Recipient, copy: bytes, target: str) -> str:
        marker = f"Delivered-To: {target}\r\n".encode()
        if marker.lower() in copy.lower() or self.submit is None:
            # a loop (it was delivered there before) or no way to send: kept rather than lost
            why = "loop" if self.submit is not None else "no submit path"
            log.warning("queue_id=%s user=%s sieve: redirect to %s refused (%s); into INBOX", message.queue_id,
                        rcpt.address, target, why)
            uid = (await self.store.deliver_async(rcpt.address, copy))[1]
            return f"redirect {target} refused ({why}), INBOX uid {uid}"
        sender = message.mail_from
        if self.sender_for is not None and sender:
            sender = self.sender_for(sender, rcpt.address, target)  # SRS when on, for the destination's SPF
        await self.submit(sender, [target], copy.split(b"\r\n", 1)[1])  # without our Return-Path
        return f"redirect {target} from <{sender}>"

    async def _reject(self, message: QueuedMessage, rcpt: Recipient, view: MailView, action: Reject) -> str:
        forged = _failed_authentication(view, self.hostname)
        if not message.mail_from or forged or self.submit is None:
            why = "null sender" if not message.mail_from else "sender failed SPF/DMARC" if forged else \
                "no submit path"
            log.info("queue_id=%s user=%s sieve: reject without a DSN (%s); message discarded", message.queue_id,
                     rcpt.address, why)
            return f"reject, discarded ({why})"
        result = RcptResult(550, "5.7.1", " ".join(action.reason.split()) or "rejected", None)
        dsn = build_dsn(self.hostname, message.mail_from, view.data,
                        [(rcpt.original or rcpt.address, result)], action="failed",
                        arrival=datetime.fromtimestamp(message.arrival, UTC), queue_id=message.queue_id)
        await self.submit("", [message.mail_from], dsn)
        return f"reject, DSN to <{message.mail_from}>"

    async def _vacation(self, message: QueuedMessage, rcpt: Recipient, view: MailView, action: Vacation) -> str:
        why = refusal(action, view, rcpt.address)
        if why is None and self.submit is None:
            why = "no submit path"
        if why is not None:
            return f"vacation not sent ({why})"
        due = await asyncio.to_thread(self.engine.state.vacation_due, rcpt.address, message.mail_from,
                                      action.handle, action.seconds, datetime.now(UTC).timestamp())
        if not due:
            return f"vacation not sent (answered <{message.mail_from}> within {action.seconds // 86400} days)"
        assert self.submit is not None
        await self.submit("", [message.mail_from], build_reply(action, view, rcpt.address, self.hostname))
        return f"vacation reply to <{message.mail_from}>"


def _key(action: FileInto | Redirect | Reject | Vacation) -> str:
    if isinstance(action, FileInto):
        return f"fileinto {action.folder}"
    if isinstance(action, Redirect):
        return f"redirect {action.address.lower()}"
    return "reject" if isinstance(action, Reject) else "vacation"


def _failed_authentication(view: MailView, hostname: str) -> bool:
    """Whether our own Authentication-Results (authserv-id = this host, RFC 8601 §2.2) records an SPF or DMARC
    failure."""
    for value in view.headers("authentication-results"):
        if value.split(";")[0].strip().lower() == hostname.lower() and _AUTH_RESULTS_FAIL.search(value):
            return True
    return False
