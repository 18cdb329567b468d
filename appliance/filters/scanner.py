"""What every content scanner is to the filter engine: a client that takes one message and answers a Verdict.

The scanners (clamd.py, spamd.py, rspamd.py, milter/) are protocol clients; they report what the daemon said and
decide nothing. The engine (engine.py) runs them concurrently at the end of DATA, applies the timeouts, the
``max_scan_size`` and the circuit breaker, and the policy (policy.py) turns their verdicts into the SMTP reply,
the headers, the Junk folder or the quarantine.

A scanner raises ``ScanError`` (or OSError, or lets the engine's timeout cancel it) when it could not scan: the
engine then applies the scanner's ``on_error``. A Verdict is never a guess: a scanner that did not see the whole
message (clamd's own size limits) says so with ``skipped``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from appliance.pipeline.stages import Client, Transaction


class ScanError(Exception):
    """The scanner could not give a verdict (daemon down, protocol error, refused request); str() is one line
    for the log, naming the scanner's address and what went wrong."""


class Action(enum.Enum):
    """What a scanner itself asks for (rspamd's actions, a milter's replies), least to most severe."""

    NONE = "no action"
    ADD_HEADER = "add header"
    REWRITE_SUBJECT = "rewrite subject"
    QUARANTINE = "quarantine"  # a milter's SMFIR_QUARANTINE or SMFIR_DISCARD: held, never silently dropped
    GREYLIST = "greylist"  # 451 4.7.1, the sender retries later
    SOFT_REJECT = "soft reject"  # 451 4.7.1
    REJECT = "reject"  # 550 5.7.1

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {action: rank for rank, action in enumerate(Action)}


# Modifications a milter may ask for at end of message (milter protocol v6, SMFIR_*); applied by the engine
# after every scanner has answered, in the order the scanners are configured.
@dataclass(frozen=True, slots=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    index: int  # position among the message's header fields, 0 = first
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    name: str
    index: int  # the index-th (1-based) field of that name; value "" deletes the field
    value: str


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    body: bytes  # the whole new body (the milter may send it in several chunks; the client joins them)


@dataclass(frozen=True, slots=True)
class ChangeSender:
    address: str  # without angle brackets; "" for the null reverse-path
    parameters: str = ""


@dataclass(frozen=True, slots=True)
class AddRecipient:
    address: str
    parameters: str = ""


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    address: str


Change = AddHeader | InsertHeader | ChangeHeader | ReplaceBody | ChangeSender | AddRecipient | DeleteRecipient


@dataclass(frozen=True, slots=True)
class Verdict:
    """One scanner's answer about one message. Every field is what the daemon said, nothing more."""

    scanner: str  # the configured name (filters.scanners[].name)
    virus: str | None = None  # the signature name clamd (or a milter) reported
    score: float | None = None  # a spam score (spamd, rspamd)
    required: float | None = None  # the scanner's own spam threshold, for the X-Spam-Status line
    rules: tuple[str, ...] = ()  # the rules / symbols that matched
    action: Action = Action.NONE  # what the scanner asks for itself (rspamd, milters)
    reply: str | None = None  # the scanner's own SMTP reply for REJECT / SOFT_REJECT (a milter's SMFIR_REPLYCODE)
    subject: str | None = None  # REWRITE_SUBJECT: the new Subject (rspamd gives it whole)
    headers: tuple[tuple[str, str], ...] = ()  # header fields the scanner asks to add (rspamd's milter block)
    changes: tuple[Change, ...] = ()  # a milter's modifications
    skipped: str | None = None  # why the message was not (wholly) scanned, e.g. "larger than 512000 bytes"
    detail: str = ""  # more for the log and the summary header (e.g. the quarantine reason)

    @property
    def spam(self) -> bool:
        return self.score is not None and self.required is not None and self.score >= self.required


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """One message as the scanners see it: the connection, the transaction and the message bytes (CRLF line
    endings, without the Received header this host adds)."""

    client: Client
    transaction: Transaction
    data: bytes
    hostname: str  # this host's name (the milter macro j, rspamd's MTA-Name)
    queue_id: str = ""  # not yet known at the end of DATA; scanners send what they have
    recipients: tuple[str, ...] = field(default=())  # the accepted recipients as given in RCPT TO

    @property
    def sender(self) -> str:
        """The reverse-path without brackets ("" for the null one)."""
        mail_from = self.transaction.mail_from or ""
        return "" if mail_from == "<>" else mail_from


class Scanner(Protocol):
    """A content scanner client: built from its config (filters.scanners[] entry), used for many messages at
    once (each scan opens its own connection or takes one from a pool), closed at shutdown or reload."""

    name: str

    async def scan(self, request: ScanRequest) -> Verdict: ...

    async def close(self) -> None: ...
