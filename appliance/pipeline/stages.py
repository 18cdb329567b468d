"""The message pipeline: checks registered in order at the hook points of an SMTP transaction.

A check is a callable registered at one stage. It gets the connection (``Client``), the transaction
(``Transaction``) and what the stage is about (the HELO name, the sender, a recipient, the data), and answers
with a ``Result`` or None (no opinion: the next check runs). A result may

- refuse (a 5xx reply) or tempfail (a 4xx reply): the stage ends and the client gets that reply;
- accept: the stage ends with success, later checks of that stage are skipped (a whitelist);
- continue with headers to add to the message and verdicts for the checks of later stages.

A check may be a plain function or a coroutine function: the pipeline awaits only when a check actually
returns an awaitable, so stages whose checks are all synchronous (the recipient policy, the limits) cost a
few calls and no task. Stages are run by the SMTP handler (smtp/server.py); the checks never see the wire.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from appliance.message.address import Mailbox


class Stage(enum.Enum):
    """Where a check runs; each stage gives its checks one argument beside Client and Transaction."""

    CONNECT = "connect"  # before the greeting; no transaction; argument: the listener (smtp, submission, ...)
    HELO = "helo"  # HELO/EHLO; no transaction; argument: the name the client gave (str)
    MAIL = "mail"  # MAIL FROM, address already parsed; argument: MailFrom
    RCPT = "rcpt"  # RCPT TO, address already parsed; argument: RcptTo (its targets may be rewritten)
    DATA = "data"  # after the final dot, before the 250; argument: the message bytes (CRLF, unstuffed)
    AUTH = "auth"  # an AUTH command, before the SASL exchange; no transaction; argument: None; its checks
    # answer at once (plain functions, no awaitable)


class Action(enum.Enum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    REFUSE = "refuse"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class Result:
    """A check's answer. Build it with ``refuse``, ``tempfail``, ``accept`` or ``note``."""

    action: Action
    reply: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    verdicts: tuple[tuple[str, object], ...] = ()

    @property
    def ends_stage(self) -> bool:
        return self.action is not Action.CONTINUE

    @property
    def refused(self) -> bool:
        return self.action is Action.REFUSE or self.action is Action.TEMPFAIL


def refuse(reply: str) -> Result:
    """A permanent refusal: ``reply`` must be a 5xx SMTP reply."""
    if not reply.startswith("5"):
        raise ValueError(f"a refusal needs a 5xx reply, not {reply!r}")
    return Result(Action.REFUSE, reply)


def tempfail(reply: str) -> Result:
    """A temporary refusal (the sender retries): ``reply`` must be a 4xx SMTP reply."""
    if not reply.startswith("4"):
        raise ValueError(f"a temporary failure needs a 4xx reply, not {reply!r}")
    return Result(Action.TEMPFAIL, reply)


def accept(reply: str | None = None, headers: Iterable[tuple[str, str]] = (),
           verdicts: Iterable[tuple[str, object]] = ()) -> Result:
    """Accept at this stage without asking the checks registered after this one; ``reply`` replaces the stage's
    success reply (it must be 2xx)."""
    if reply is not None and not reply.startswith("2"):
        raise ValueError(f"an acceptance needs a 2xx reply, not {reply!r}")
    return Result(Action.ACCEPT, reply, tuple(headers), tuple(verdicts))


def note(headers: Iterable[tuple[str, str]] = (), verdicts: Iterable[tuple[str, object]] = ()) -> Result:
    """No decision: add these headers to the message and record these verdicts, and go on."""
    return Result(Action.CONTINUE, None, tuple(headers), tuple(verdicts))


class Client(Protocol):
    """What a check knows of the connection (the SMTP engine's session)."""

    @property
    def ip(self) -> str: ...

    host_name: str | None  # the HELO/EHLO name, once given
    login: str | None  # the authenticated submission user
    verdicts: dict[str, object]  # set by checks for the whole connection


class Transaction(Protocol):
    """What a check knows of the mail transaction (the SMTP engine's envelope).

    At the DATA stage a check may change the transaction it was given (a milter's modifications): replace
    ``content`` (CRLF line endings, without the Received header this host adds), change ``mail_from``, and add
    or remove entries of ``accepted``. What ``meta`` holds is stored with the message (QueuedMessage.meta): the
    folder local delivery files it into, a quarantine verdict.
    """

    mail_from: str | None  # "<>" for the null reverse-path
    rcpt_tos: list[str]
    accepted: list[tuple[str, tuple[str, ...]]]  # (recipient as given, where it goes), one per accepted RCPT
    content: bytes  # DATA: the message as received, CRLF line endings, dots unstuffed
    meta: dict[str, object]
    size: int  # declared with SIZE=
    smtp_utf8: bool
    verdicts: dict[str, object]  # set by checks for this message (reset with the transaction)
    added_headers: list[tuple[str, str]]  # headers checks asked for, added at the top of the message
    # What the engine measured of the data (DATA stage): more than the size limit arrived (and was not kept),
    # a line over 998 octets, a CR or LF not part of a CRLF (RFC 5321 §2.3.8, §4.5.3.1.6), a NUL octet.
    oversize: bool
    long_line: bool
    bare_line_ending: bool
    nul: bool


@dataclass(slots=True)
class MailFrom:
    """The MAIL stage's argument: the parsed reverse-path ("" for the null one) and the declared size."""

    address: str
    size: int


@dataclass(slots=True)
class RcptTo:
    """The RCPT stage's argument. ``targets`` is where the mail goes (the address itself until a check, such
    as the recipient policy's alias expansion, rewrites it); ``kind`` says which role serves it."""

    address: str
    mailbox: Mailbox
    targets: tuple[str, ...]
    kind: str = ""


# A check of any stage: (Client, Transaction or None, the stage's argument) -> Result, None, or an awaitable of one.
Check = Callable[..., "Result | None | Awaitable[Result | None]"]
Outcome = Result | None


class Pipeline:
    """The checks of every stage, in the order they were registered (see the module docstring)."""

    def __init__(self) -> None:
        self._checks: dict[Stage, list[Check]] = {stage: [] for stage in Stage}
        self._on_close: list[Callable[[Client], None]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []

    def register(self, stage: Stage, check: Check) -> None:
        self._checks[stage].append(check)

    def on_close(self, callback: Callable[[Client], None]) -> None:
        """``callback(client)`` runs when a connection ends, for checks that hold something per connection
        (a milter's own connection)."""
        self._on_close.append(callback)

    def closed(self, client: Client) -> None:
        """The connection of ``client`` ended: the close callbacks run (each on its own; one failing does not
        keep the others from running)."""
        for callback in self._on_close:
            try:
                callback(client)
            except Exception:  # a cleanup that failed must not end the others; it is a bug to log
                logging.getLogger("appliance.pipeline").exception("close callback %r failed", callback)

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """``await callback()`` runs when the pipeline is retired (a reload built a new one, or the service
        stops), for checks that hold something for their lifetime (a scanner's connection pool)."""
        self._on_stop.append(callback)

    async def stop(self) -> None:
        """Retire the pipeline: the stop callbacks run, in order, each on its own."""
        for callback in self._on_stop:
            try:
                await callback()
            except Exception:  # one cleanup that failed must not keep the others from running; a bug to log
                logging.getLogger("appliance.pipeline").exception("stop callback %r failed", callback)

    def checks(self, stage: Stage) -> tuple[Check, ...]:
        return tuple(self._checks[stage])

    def has_checks(self, stage: Stage) -> bool:
        return bool(self._checks[stage])

    def run(self, stage: Stage, client: Client, transaction: Transaction | None,
            argument: object) -> Outcome | Awaitable[Outcome]:
        """Run the stage: the first result that ends it (or None when none does), or an awaitable of that when
        some check had to wait. Headers and verdicts of every result are applied as they come."""
        checks = self._checks[stage]
        for index, check in enumerate(checks):
            result = check(client, transaction, argument)
            if result is None:
                continue
            if not isinstance(result, Result):
                if inspect.isawaitable(result):
                    return self._finish(stage, index, result, client, transaction, argument)
                raise TypeError(f"check {check!r} returned {result!r}, not a Result")
            _apply(result, client, transaction)
            if result.ends_stage:
                return result
        return None

    async def _finish(self, stage: Stage, index: int, pending: Awaitable[Outcome], client: Client,
                      transaction: Transaction | None, argument: object) -> Outcome:
        checks = self._checks[stage]
        result = await pending
        while True:
            if result is not None:
                _apply(result, client, transaction)
                if result.ends_stage:
                    return result
            index += 1
            if index >= len(checks):
                return None
            answer = checks[index](client, transaction, argument)
            result = answer if answer is None or isinstance(answer, Result) else await answer


def _apply(result: Result, client: Client, transaction: Transaction | None) -> None:
    if result.headers and transaction is not None:
        transaction.added_headers.extend(result.headers)
    if result.verdicts:
        target = transaction.verdicts if transaction is not None else client.verdicts
        target.update(result.verdicts)
