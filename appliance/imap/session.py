"""One IMAP connection: the RFC 3501 §3 state machine on top of the pure parser.

States: not authenticated -> authenticated -> selected -> logout (``state.State``). Each command
is read as one unit by ``wire.Wire`` (literals included), parsed by ``parser.parse_command``,
looked up in the command registry (``commands``), which names the states it is allowed in, and
handed to its handler. The selected mailbox is a ``view.View``; store changes made by other
sessions are reported through it at the points RFC 3501 §7.4.1 and §5.2 allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Callable
from typing import Protocol

from appliance.auth.authenticator import is_loopback
from appliance.imap.commands import REGISTRY
from appliance.imap.commands.append import APPENDLIMIT
from appliance.imap.parser import (
    MAX_NUMBER,
    Command,
    CopyMove,
    Expunge,
    Fetch,
    InvalidName,
    ParseError,
    Search,
    SeqRange,
    SequenceSet,
    StoreCommand,
    parse_command,
)
from appliance.imap.response import as_wire
from appliance.imap.state import State
from appliance.imap.view import ChangeWatch, View
from appliance.imap.wire import TIMEOUT_AUTH, TIMEOUT_PREAUTH, Disconnect, Wire
from appliance.store import Account, MailStore, StoreError

log = logging.getLogger("appliance.imap")

BASE_CAPS = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE"
AUTH_CAPS = ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT CHILDREN SPECIAL-USE UIDPLUS MOVE"
             " CONDSTORE QRESYNC ESEARCH LIST-EXTENDED LIST-STATUS STATUS=SIZE QUOTA QUOTA=RES-STORAGE"
             " CREATE-SPECIAL-USE")
AUTH_CAPS += " SORT SORT=DISPLAY ESORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES"  # RFC 5256, 5957, 5267
AUTH_CAPS += f" MULTIAPPEND APPENDLIMIT={APPENDLIMIT}"  # RFC 3502, RFC 7889
AUTH_CAPS += " BINARY"  # RFC 3516
AUTH_CAPS += " OBJECTID"  # RFC 8474
AUTH_CAPS += " PREVIEW"  # RFC 8970
BASE_CAPS += " IMAP4rev2"  # RFC 9051, beside IMAP4rev1 until the client ENABLEs it
AUTH_CAPS += " IMAP4rev2 UTF8=ACCEPT"  # RFC 9051, RFC 6855
AUTH_CAPS += " SEARCHRES"  # RFC 5182 (part of IMAP4rev2)


class Authenticator(Protocol):
    async def authenticate(self, username: str, password: str, client_ip: str) -> str | None: ...


class Session:
    """The connection's state: who is logged in, the selected mailbox's view, enabled extensions."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        store: MailStore,
        authenticator: Authenticator,
        ssl_context: ssl.SSLContext | None,
        hostname: str,
        plaintext_auth_on_loopback: bool,
        tls: bool,
    ) -> None:
        self.wire = Wire(reader, writer)
        self.send: Callable[[str], None] = self.wire.send
        self.store = store
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self.hostname = hostname
        self.plaintext_loopback = plaintext_auth_on_loopback
        self.tls = tls
        self.client_ip = self.wire.peer_ip()
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.account: Account | None = None
        self.view: View | None = None
        self.condstore = False
        self.qresync = False
        self.imap4rev2 = False  # ENABLE IMAP4rev2 (RFC 9051 appendix E): no \Recent, ESEARCH answers
        self.utf8 = False  # ENABLE UTF8=ACCEPT (RFC 6855)
        self.saved: list[int] = []  # UIDs of the last SEARCH RETURN (SAVE) (SEARCHRES, RFC 5182)
        self.watch = ChangeWatch()

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        wire = self.wire
        try:
            is_banned = getattr(self.authenticator, "is_banned", None)
            if is_banned is not None and is_banned(self.client_ip):
                self.send("* BYE Too many authentication failures from your address, try again later")
                await wire.flush()
                return
            self.send(f"* OK [CAPABILITY {self.capabilities()}] {self.hostname} Mailfleet IMAP ready")
            await wire.flush()
            while self.state is not State.LOGOUT:
                timeout = TIMEOUT_PREAUTH if self.state is State.NOT_AUTHENTICATED else TIMEOUT_AUTH
                raw = await wire.read_command(timeout)
                if raw is None:
                    continue
                if not raw.strip():
                    self.send("* BAD Empty command line")
                    await wire.flush()
                    continue
                await self.handle(raw)
                await wire.flush()
        except Disconnect:
            pass
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.cleanup()
            with contextlib.suppress(Exception):
                wire.close()

    def cleanup(self) -> None:
        self.watch.close()

    async def handle(self, raw: bytes) -> None:
        try:
            command = parse_command(raw)
        except ParseError as exc:
            self.send(f"{exc.tag or '*'} BAD {exc.reason}")
            return
        log.debug("%s: %s %s", self.client_ip, command.tag, command.name)
        tag = command.tag
        spec = REGISTRY[command.name]  # every name the parser accepts is registered
        problem = spec.refusal(self.state)
        if problem:
            self.send(f"{tag} BAD {problem}")
            return
        names = [getattr(command, a) for a in ("mailbox", "old", "new") if hasattr(command, a)]
        if any(name == "" for name in names):
            self.send(f"{tag} NO [CANNOT] Invalid mailbox name: Name is empty")
            return
        if any(isinstance(name, InvalidName) for name in names):
            self.send(f"{tag} NO Mailbox name is not valid mUTF-7")  # as Dovecot: no such mailbox can exist
            return
        command = self.with_saved_result(command)
        try:
            await spec.handler(self, command)
        except Disconnect:
            raise
        except (ConnectionError, ssl.SSLError):
            raise
        except ParseError as exc:
            self.send(f"{tag} BAD Error in IMAP command {command.name}: {exc.reason}")
        except StoreError as exc:
            self.send(f"{tag} NO {as_wire(str(exc))}")  # a folder name in it goes out as UTF-8
        except Exception:
            log.exception("IMAP command %s failed for %s", command.name, self.user or self.client_ip)
            self.send(f"{tag} NO [SERVERBUG] Internal error occurred. Refer to server log for more information.")

    # ------------------------------------------------------------------ state changes

    def logged_in(self, address: str, account: Account) -> None:
        self.user = address
        self.account = account
        self.watch.attach(account)
        self.state = State.AUTHENTICATED

    def select(self, view: View) -> None:
        self.view = view
        self.saved = []  # RFC 5182 §2.1: a new mailbox starts with an empty saved result
        self.watch.folder = view.name
        self.state = State.SELECTED

    def deselect(self, state: State = State.AUTHENTICATED) -> None:
        """Leave the selected mailbox: for the authenticated state, or for logout when it is gone."""
        self.view = None
        self.watch.folder = None
        self.state = state

    # ------------------------------------------------------------------ shared by commands

    def with_saved_result(self, command: Command) -> Command:
        """The command with "$" (RFC 5182) replaced by the saved result: UIDs for a UID command or inside
        SEARCH, the messages' current sequence numbers otherwise."""
        if isinstance(command, Search):
            return dataclasses.replace(command, criteria=self._saved_in_criteria(command.criteria))
        if not isinstance(command, (Fetch, StoreCommand, CopyMove, Expunge)):
            return command
        sequence = command.sequence
        if sequence is not None and sequence.saved:
            uid = command.uid
            numbers = self.saved
            if not uid and self.view is not None:
                seqs = self.view.seq_of()
                numbers = sorted(seqs[u] for u in self.saved if u in seqs)
            if not numbers:  # nothing saved: a UID set that names no message
                return dataclasses.replace(command, sequence=_as_set([MAX_NUMBER]), uid=True)
            return dataclasses.replace(command, sequence=_as_set(numbers))
        return command

    def _saved_in_criteria(self, node: tuple) -> tuple:
        if node[0] == "SEQ" and node[1].saved:
            return ("UID", _as_set(self.saved or [MAX_NUMBER]))
        if node[0] == "AND":
            return ("AND", [self._saved_in_criteria(n) for n in node[1]])
        if node[0] in ("OR", "NOT"):
            return (node[0], *(self._saved_in_criteria(n) for n in node[1:]))
        return node

    def capabilities(self) -> str:
        if self.state is not State.NOT_AUTHENTICATED:
            return AUTH_CAPS
        caps = BASE_CAPS
        if not self.tls and self.ssl_context is not None:
            caps += " STARTTLS"
        caps += " AUTH=PLAIN" if self.plaintext_allowed() else " LOGINDISABLED"
        return caps

    def plaintext_allowed(self) -> bool:
        if self.tls:
            return True
        return self.plaintext_loopback and is_loopback(self.client_ip)

    def sync(self, allow_expunge: bool, uid_fetch: bool = False) -> None:
        """Report the selected mailbox's changes (see ``View.sync``); BYE when it is gone."""
        view = self.view
        if view is None:
            return
        lost = view.sync(allow_expunge, uid_fetch, self.condstore, self.qresync)
        if lost is not None:
            self.send(f"* BYE {lost.value}")
            self.deselect(State.LOGOUT)

    def sync_after_command(self, uid: bool) -> None:
        """Changes by others are reported after the command's own data, as Dovecot does; EXPUNGE only
        for UID commands (RFC 3501 §7.4.1)."""
        self.sync(allow_expunge=uid, uid_fetch=uid)

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 §3.1): announce HIGHESTMODSEQ the first time."""
        if self.condstore:
            return
        self.condstore = True
        self.announce_highestmodseq()

    def announce_highestmodseq(self) -> None:
        if self.view is not None and self.account is not None:
            highest = self.account.folder(self.view.name).highestmodseq
            self.send(f"* OK [HIGHESTMODSEQ {highest}] Highest")


def _as_set(numbers: list[int]) -> SequenceSet:
    """Sorted numbers as a sequence set of ranges."""
    ranges: list[SeqRange] = []
    for n in sorted(numbers):
        if ranges and ranges[-1].end == n - 1:
            ranges[-1] = SeqRange(ranges[-1].start, n)
        else:
            ranges.append(SeqRange(n, n))
    return SequenceSet(tuple(ranges))
