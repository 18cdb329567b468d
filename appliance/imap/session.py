"""One IMAP connection: the RFC 3501 §3 state machine on top of the pure parser.

States: not authenticated -> authenticated -> selected -> logout. Each command is read as one
unit (literals included), parsed by ``parser.parse_command`` and dispatched to a ``cmd_*`` method
allowed in the current state. Store changes made by other sessions (this process: signalled by
the store; other processes: found by polling) are reported as untagged EXISTS / EXPUNGE / FETCH
at the points RFC 3501 §7.4.1 and §5.2 allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.auth.authenticator import is_loopback
from appliance.auth.sasl import SaslCancelled, SaslError, decode_plain
from appliance.imap import fetch as fetchmod
from appliance.imap import listing
from appliance.imap import search as searchmod
from appliance.imap.message import Message, cached_header
from appliance.imap.parser import (
    Append,
    Authenticate,
    Command,
    CopyMove,
    Enable,
    Expunge,
    Fetch,
    FetchAtt,
    IdCommand,
    ListCommand,
    Login,
    MailboxCommand,
    ParseError,
    QuotaCommand,
    Rename,
    Search,
    Select,
    SequenceSet,
    Status,
    StoreCommand,
    parse_command,
    parse_tag,
)
from appliance.imap.response import encode, quote
from appliance.store import (
    DELIMITER,
    Account,
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    MailStore,
    MessageInfo,
    QuotaExceeded,
    StoreError,
    mutf7,
)

log = logging.getLogger("appliance.imap")

MAX_LINE = 64 * 1024
MAX_LITERAL = 64 * 1024 * 1024
MAX_COMMAND = 72 * 1024 * 1024
IDLE_POLL = 2.0  # seconds between polls for other processes' changes during IDLE
TIMEOUT_PREAUTH = 180.0
TIMEOUT_AUTH = 30 * 60.0  # RFC 3501 §5.4: at least 30 minutes
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}$")

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not authenticated", "authenticated", "selected", "logout"
ANY_STATE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
PREAUTH_ONLY = frozenset({"STARTTLS", "AUTHENTICATE", "LOGIN"})
AUTH_STATE = frozenset({"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
                        "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE", "GETQUOTA",
                        "GETQUOTAROOT", "SETQUOTA"})
SELECTED_STATE = frozenset({"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
                            "MOVE"})
BASE_CAPS = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE"
AUTH_CAPS = ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT CHILDREN SPECIAL-USE UIDPLUS MOVE"
             " CONDSTORE QRESYNC ESEARCH LIST-EXTENDED LIST-STATUS STATUS=SIZE QUOTA QUOTA=RES-STORAGE"
             " CREATE-SPECIAL-USE")


class Authenticator(Protocol):
    async def authenticate(self, username: str, password: str, client_ip: str) -> str | None: ...


class Disconnect(Exception):
    """End the connection (after LOGOUT, or a fatal protocol error already answered)."""


@dataclass
class View:
    """The selected mailbox as this session has told the client about it (RFC 3501 §2.3.1)."""

    name: str
    readonly: bool
    uidvalidity: int
    uids: list[int]
    flags: dict[int, frozenset[str]]
    recent: set[int]
    modseq: int
    keywords: set[str] = field(default_factory=set)
    dirty: bool = False  # expunges seen but not yet reported
    recent_reported: int = 0
    high: int = 0  # the highest UID ever announced to the client

    def seq_of(self) -> dict[int, int]:
        return {uid: i + 1 for i, uid in enumerate(self.uids)}


class Session:
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
        self.reader = reader
        self.writer = writer
        self.store = store
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self.hostname = hostname
        self.plaintext_loopback = plaintext_auth_on_loopback
        self.tls = tls
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        self.client_ip = str(peer[0])
        self.state = NOT_AUTHENTICATED
        self.user: str | None = None
        self.account: Account | None = None
        self.view: View | None = None
        self.condstore = False
        self.qresync = False
        self.changed = asyncio.Event()
        self._unsubscribe: Any = None
        self._loop = asyncio.get_running_loop()
        self._out: list[str] = []
        self._out_size = 0

    # ------------------------------------------------------------------ I/O

    def send(self, line: str) -> None:
        self._out.append(line)
        self._out.append("\r\n")
        self._out_size += len(line)

    async def flush(self) -> None:
        if self._out:
            data = encode("".join(self._out))
            self._out.clear()
            self._out_size = 0
            self.writer.write(data)
            await self.writer.drain()

    async def maybe_flush(self) -> None:
        if self._out_size > 256 * 1024:
            await self.flush()

    async def _readline(self, timeout: float) -> bytes:
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), timeout)
        except asyncio.LimitOverrunError:
            self.send("* BYE Line too long")
            await self.flush()
            raise Disconnect from None
        except asyncio.IncompleteReadError:
            raise Disconnect from None
        except TimeoutError:
            self.send("* BYE Disconnected for inactivity")
            await self.flush()
            raise Disconnect from None
        return line

    async def read_command(self) -> bytes | None:
        """Read one command, inlining literals (RFC 3501 §4.3, RFC 7888 LITERAL+)."""
        timeout = TIMEOUT_PREAUTH if self.state == NOT_AUTHENTICATED else TIMEOUT_AUTH
        buf = bytearray()
        while True:
            line = await self._readline(timeout)
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            buf += line
            match = _LITERAL_AT_END.search(line)
            if not match:
                return bytes(buf)
            size = int(match.group(1))
            sync = not match.group(2)
            if size > MAX_LITERAL or len(buf) + size > MAX_COMMAND:
                tag = parse_tag(bytes(buf)) or "*"
                if sync:
                    # RFC 7889 TOOBIG-like refusal: the client will not send the data
                    self.send(f"{tag} NO [TOOBIG] Literal larger than {MAX_LITERAL} octets")
                    await self.flush()
                    return None
                self.send("* BYE Literal too big")
                await self.flush()
                raise Disconnect
            if sync:
                self.send("+ OK")
                await self.flush()
            try:
                data = await asyncio.wait_for(self.reader.readexactly(size), timeout)
            except (asyncio.IncompleteReadError, TimeoutError):
                raise Disconnect from None
            buf += b"\r\n" + data

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        try:
            is_banned = getattr(self.authenticator, "is_banned", None)
            if is_banned is not None and is_banned(self.client_ip):
                self.send("* BYE Too many authentication failures from your address, try again later")
                await self.flush()
                return
            self.send(f"* OK [CAPABILITY {self.capabilities()}] {self.hostname} Mailfleet IMAP ready")
            await self.flush()
            while self.state != LOGOUT:
                raw = await self.read_command()
                if raw is None:
                    continue
                if not raw.strip():
                    self.send("* BAD Empty command line")
                    await self.flush()
                    continue
                await self.handle(raw)
                await self.flush()
        except Disconnect:
            pass
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.cleanup()
            with contextlib.suppress(Exception):
                self.writer.close()

    def cleanup(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def handle(self, raw: bytes) -> None:
        try:
            command = parse_command(raw)
        except ParseError as exc:
            self.send(f"{exc.tag or '*'} BAD {exc.reason}")
            return
        log.debug("%s: %s %s", self.client_ip, command.tag, command.name)
        tag = command.tag
        problem = self._state_problem(command.name)
        if problem:
            self.send(f"{tag} BAD {problem}")
            return
        names = [getattr(command, a) for a in ("mailbox", "old", "new") if hasattr(command, a)]
        if any(name == "" for name in names):
            self.send(f"{tag} NO [CANNOT] Invalid mailbox name: Name is empty")
            return
        try:
            handler = getattr(self, "cmd_" + command.name.lower())
            await handler(command)
        except Disconnect:
            raise
        except (ConnectionError, ssl.SSLError):
            raise
        except ParseError as exc:
            self.send(f"{tag} BAD Error in IMAP command {command.name}: {exc.reason}")
        except StoreError as exc:
            self.send(f"{tag} NO {exc}")
        except Exception:
            log.exception("IMAP command %s failed for %s", command.name, self.user or self.client_ip)
            self.send(f"{tag} NO [SERVERBUG] Internal error occurred. Refer to server log for more information.")

    def _state_problem(self, name: str) -> str | None:
        if name in ANY_STATE:
            return None
        if name in PREAUTH_ONLY:
            return None if self.state == NOT_AUTHENTICATED else "Already authenticated"
        if self.state == NOT_AUTHENTICATED:
            return "Please authenticate first"
        if name in AUTH_STATE:
            return None
        if name in SELECTED_STATE and self.state != SELECTED:
            return "No mailbox selected"
        return None

    # ------------------------------------------------------------------ helpers

    def capabilities(self) -> str:
        if self.state != NOT_AUTHENTICATED:
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

    def _notified(self, folder: str) -> None:
        """Store callback (any thread): wake IDLE when our mailbox changed."""
        view = self.view
        if view is not None and folder == view.name:
            self._loop.call_soon_threadsafe(self.changed.set)

    def wire_name(self, name: str) -> str:
        encoded = mutf7.encode(name)
        if encoded and all(c.isalnum() or c in "-_./&+,:;=@!~$'^`|#" for c in encoded):
            return encoded
        return quote(encoded)

    def resolve(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set; BAD-worthy ParseError for sequence numbers out of range."""
        assert self.view is not None
        uids = self.view.uids
        if uid:
            return sequence.resolve_within(uids)
        if not uids:
            raise ParseError("Invalid messageset (mailbox is empty)")
        if sequence.highest(len(uids)) > len(uids):
            raise ParseError("Invalid messageset (sequence number beyond the last message)")
        return [uids[n - 1] for n in sorted(sequence.resolve(len(uids)))]

    # ------------------------------------------------------------------ mailbox synchronisation

    def sync(self, allow_expunge: bool, uid_fetch: bool = False) -> None:
        """Report changes since the client's view as untagged responses (RFC 3501 §7.3.1, §7.4.1)."""
        view = self.view
        account = self.account
        if view is None or account is None:
            return
        try:
            info = account.folder(view.name)
        except FolderNotFound:
            self.send("* BYE Selected mailbox was deleted")
            self.view = None
            self.state = LOGOUT
            return
        if info.uidvalidity != view.uidvalidity:
            self.send("* BYE Selected mailbox was renamed or recreated")
            self.view = None
            self.state = LOGOUT
            return
        if info.highestmodseq == view.modseq and not view.dirty:
            return
        claimed: set[int] = set()
        if not view.readonly and info.uidnext - 1 > view.high:
            claimed = account.claim_recent(view.name)  # before reading the UIDs: no new message missed
        current = account.uids(view.name)
        present = set(current)
        gone = [u for u in view.uids if u not in present]
        if gone:
            if allow_expunge:
                if self.qresync:
                    self.send(f"* VANISHED {_compress(gone)}")  # RFC 7162 §3.2.10
                else:
                    seqs = view.seq_of()
                    for uid in reversed(gone):
                        self.send(f"* {seqs[uid]} EXPUNGE")
                gone_set = set(gone)
                view.uids = [u for u in view.uids if u not in gone_set]
                for uid in gone:
                    view.flags.pop(uid, None)
                    view.recent.discard(uid)
                view.dirty = False
            else:
                view.dirty = True
        else:
            view.dirty = False
        new = [u for u in current if u > view.high]
        changes = account.changed_since(view.name, view.modseq)
        view.recent |= claimed & present
        if new:
            view.uids.extend(new)
            view.high = new[-1]
            self.send(f"* {len(view.uids)} EXISTS")
        if len(view.recent) != view.recent_reported:  # only when it changed, as Dovecot
            self.send(f"* {len(view.recent)} RECENT")
            view.recent_reported = len(view.recent)
        seqs = view.seq_of()
        new_set = set(new)
        new_keywords = set()
        for msg in changes:
            new_keywords |= {f for f in msg.flags if not f.startswith("\\")}
            if msg.uid in new_set:
                view.flags[msg.uid] = msg.flags
                continue
            if msg.uid not in seqs or view.flags.get(msg.uid) == msg.flags:
                continue
            view.flags[msg.uid] = msg.flags
            parts = [f"FLAGS {fetchmod.flag_list(msg.flags, msg.uid in view.recent)}"]
            if uid_fetch or self.condstore:
                parts.insert(0, f"UID {msg.uid}")
            if self.condstore:
                parts.append(f"MODSEQ ({msg.modseq})")
            self.send(f"* {seqs[msg.uid]} FETCH ({' '.join(parts)})")
        if new_keywords - view.keywords:
            view.keywords |= new_keywords
            self.send_flags(view, permanent=True)
        view.modseq = info.highestmodseq

    def _expunges_after_uid_command(self, uid: bool) -> None:
        """Changes by others are reported after the command's own data, as Dovecot does; EXPUNGE only
        for UID commands (RFC 3501 §7.4.1)."""
        self.sync(allow_expunge=uid, uid_fetch=uid)

    def send_flags(self, view: View, permanent: bool = False) -> None:
        flags = " ".join([*SYSTEM_FLAGS, *sorted(view.keywords)])
        self.send(f"* FLAGS ({flags})")
        if permanent:
            if view.readonly:
                self.send("* OK [PERMANENTFLAGS ()] Read-only mailbox.")
            else:
                self.send(f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted.")

    # ------------------------------------------------------------------ any state

    async def cmd_capability(self, cmd: Command) -> None:
        self.send(f"* CAPABILITY {self.capabilities()}")
        self.send(f"{cmd.tag} OK Capability completed.")

    async def cmd_noop(self, cmd: Command) -> None:
        self.sync(allow_expunge=True)
        self.send(f"{cmd.tag} OK NOOP completed.")

    async def cmd_check(self, cmd: Command) -> None:
        self.sync(allow_expunge=True)
        self.send(f"{cmd.tag} OK Check completed.")

    async def cmd_logout(self, cmd: Command) -> None:
        self.send("* BYE Logging out")
        self.send(f"{cmd.tag} OK Logout completed.")
        self.state = LOGOUT

    async def cmd_id(self, cmd: IdCommand) -> None:
        # RFC 2971
        self.send('* ID ("name" "Mailfleet" "vendor" "Mailfleet")')
        self.send(f"{cmd.tag} OK ID completed.")

    # ------------------------------------------------------------------ not authenticated

    async def cmd_starttls(self, cmd: Command) -> None:
        if self.tls or self.ssl_context is None:
            self.send(f"{cmd.tag} BAD TLS is already active" if self.tls else f"{cmd.tag} BAD STARTTLS unavailable")
            return
        # RFC 3501 §6.2.1 / RFC 2595 §3.1: drop anything pipelined after STARTTLS (plaintext injection)
        buffered = getattr(self.reader, "_buffer", None)
        if buffered:
            buffered.clear()
        self.send(f"{cmd.tag} OK Begin TLS negotiation now.")
        await self.flush()
        try:
            await self.writer.start_tls(self.ssl_context)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            log.info("%s: STARTTLS handshake failed: %s", self.client_ip, exc)
            raise Disconnect from None
        self.tls = True

    async def cmd_login(self, cmd: Login) -> None:
        if not self.plaintext_allowed():
            self.send(f"{cmd.tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure "
                      "(SSL/TLS) connections.")
            return
        await self._authenticate(cmd.tag, cmd.username, cmd.password)

    async def cmd_authenticate(self, cmd: Authenticate) -> None:
        if cmd.mechanism != "PLAIN":
            self.send(f"{cmd.tag} NO Unsupported authentication mechanism.")
            return
        if not self.plaintext_allowed():
            self.send(f"{cmd.tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure "
                      "(SSL/TLS) connections.")
            return
        response = cmd.initial
        if response is None:
            self.send("+ ")
            await self.flush()
            line = await self._readline(TIMEOUT_PREAUTH)
            response = line.decode("ascii", "replace").strip()
        try:
            username, password = decode_plain(response)
        except SaslCancelled:
            self.send(f"{cmd.tag} BAD Authentication aborted by client.")
            return
        except SaslError as exc:
            self.send(f"{cmd.tag} BAD {exc}")
            return
        await self._authenticate(cmd.tag, username, password)

    async def _authenticate(self, tag: str, username: str, password: str) -> None:
        address = await self.authenticator.authenticate(username, password, self.client_ip)
        if address is None:
            await asyncio.sleep(0.5)  # slow down guessing a little; bans are the authenticator's job
            self.send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.")
            return
        self.user = address
        self.account = await asyncio.to_thread(self.store.account, address)
        self._unsubscribe = self.account.subscribe(self._notified)
        self.state = AUTHENTICATED
        log.info("%s: logged in as %s", self.client_ip, address)
        self.send(f"{tag} OK [CAPABILITY {self.capabilities()}] Logged in")

    # ------------------------------------------------------------------ authenticated

    async def cmd_enable(self, cmd: Enable) -> None:
        enabled = []
        for cap in cmd.capabilities:
            if cap == "QRESYNC" and not self.qresync:
                self.qresync = True  # RFC 7162 §3.2.3: implies CONDSTORE
                enabled.append(cap)
                self.condstore = True
                continue
            if cap == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append(cap)
                if self.view is not None and self.account is not None:
                    highest = self.account.folder(self.view.name).highestmodseq
                    self.send(f"* OK [HIGHESTMODSEQ {highest}] Highest")
        self.send("* ENABLED" + "".join(" " + c for c in enabled))
        self.send(f"{cmd.tag} OK Enabled.")

    async def cmd_namespace(self, cmd: Command) -> None:
        self.send(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL')
        self.send(f"{cmd.tag} OK Namespace completed.")

    async def cmd_select(self, cmd: Select) -> None:
        await self._select(cmd, readonly=False)

    async def cmd_examine(self, cmd: Select) -> None:
        await self._select(cmd, readonly=True)

    async def _select(self, cmd: Select, readonly: bool) -> None:
        assert self.account is not None
        if cmd.qresync is not None and not self.qresync:
            self.send(f"{cmd.tag} BAD QRESYNC is not enabled")  # RFC 7162 §3.2.5: ENABLE QRESYNC first
            return
        if self.view is not None:
            self.send("* OK [CLOSED] Previous mailbox closed.")  # RFC 7162 §3.2.11
        self.view = None
        self.state = AUTHENTICATED
        account = self.account
        try:
            info = account.folder(cmd.mailbox)
        except FolderNotFound:
            self._no_such_mailbox(cmd.tag, cmd.mailbox)
            return
        if cmd.condstore:
            self.condstore = True
        recent = account.recent_uids(info.name) if readonly else account.claim_recent(info.name)
        messages = account.flag_list(info.name)
        recent_count = len(recent)
        view = View(info.name, readonly, info.uidvalidity, [uid for uid, _ in messages],
                    dict(messages), recent, info.highestmodseq, recent_reported=len(recent),
                    high=messages[-1][0] if messages else 0)
        for flags in {flags for _, flags in messages}:
            view.keywords |= {f for f in flags if not f.startswith("\\")}
        self.send_flags(view, permanent=True)
        self.send(f"* {len(view.uids)} EXISTS")
        self.send(f"* {recent_count} RECENT")
        first_unseen = next((i + 1 for i, (_, flags) in enumerate(messages) if "\\Seen" not in flags), None)
        if first_unseen is not None:
            self.send(f"* OK [UNSEEN {first_unseen}] First unseen.")
        self.send(f"* OK [UIDVALIDITY {info.uidvalidity}] UIDs valid")
        self.send(f"* OK [UIDNEXT {info.uidnext}] Predicted next UID")
        self.send(f"* OK [HIGHESTMODSEQ {info.highestmodseq}] Highest")
        self.view = view
        self.state = SELECTED
        if cmd.qresync is not None and cmd.qresync[0] == info.uidvalidity:
            self._qresync_report(cmd.qresync[1], cmd.qresync[2])
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        self.send(f"{cmd.tag} OK [{mode}] {'Examine' if readonly else 'Select'} completed.")

    def _qresync_report(self, modseq: int, known: SequenceSet | None) -> None:
        """RFC 7162 §3.2.5.2: what changed since the client's MODSEQ: VANISHED (EARLIER), then FETCH."""
        assert self.view is not None and self.account is not None
        view = self.view
        vanished = self.account.expunged_since(view.name, modseq)
        if known is not None and vanished:
            vanished = known.resolve_within(vanished)
        if vanished:
            self.send(f"* VANISHED (EARLIER) {_compress(vanished)}")
        seqs = view.seq_of()
        for msg in self.account.changed_since(view.name, modseq):
            if msg.uid not in seqs or (known is not None and not known.resolve_within([msg.uid])):
                continue
            flags = fetchmod.flag_list(msg.flags, msg.uid in view.recent)
            self.send(f"* {seqs[msg.uid]} FETCH (UID {msg.uid} FLAGS {flags} MODSEQ ({msg.modseq}))")

    async def cmd_create(self, cmd: MailboxCommand) -> None:
        assert self.account is not None
        name = cmd.mailbox.rstrip(DELIMITER)  # RFC 3501 §6.3.3: trailing delimiter = will have children
        special = None
        for use in cmd.use:
            if use not in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"):
                self.send(f"{cmd.tag} NO [USEATTR] Unsupported special-use attribute {use}")
                return
            special = use
        if name.upper() == "INBOX" or _exists(self.account, name):
            self.send(f"{cmd.tag} NO [ALREADYEXISTS] Mailbox already exists")
            return
        try:
            self.account.create_folder(name, special)
        except FolderExists:
            self.send(f"{cmd.tag} NO [ALREADYEXISTS] Mailbox already exists")
            return
        except InvalidFolderName as exc:
            self.send(f"{cmd.tag} NO [CANNOT] {exc}")
            return
        self.send(f"{cmd.tag} OK Create completed.")

    async def cmd_delete(self, cmd: MailboxCommand) -> None:
        assert self.account is not None
        if cmd.mailbox.upper() == "INBOX":
            self.send(f"{cmd.tag} NO INBOX can't be deleted.")
            return
        try:
            self.account.delete_folder(cmd.mailbox)
        except FolderNotFound:
            self.send(f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't exist: {cmd.mailbox}")
            return
        except InvalidFolderName as exc:
            self.send(f"{cmd.tag} NO [CANNOT] {exc}")
            return
        if self.view is not None and self.view.name == cmd.mailbox:
            self.view = None
            self.state = AUTHENTICATED
        self.send(f"{cmd.tag} OK Delete completed.")

    async def cmd_rename(self, cmd: Rename) -> None:
        assert self.account is not None
        try:
            self.account.rename_folder(cmd.old, cmd.new.rstrip(DELIMITER))
        except FolderNotFound:
            self.send(f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't exist: {cmd.old}")
            return
        except FolderExists:
            self.send(f"{cmd.tag} NO [ALREADYEXISTS] Target mailbox already exists")
            return
        except InvalidFolderName as exc:
            self.send(f"{cmd.tag} NO [CANNOT] {exc}")
            return
        self.send(f"{cmd.tag} OK Rename completed.")

    async def cmd_subscribe(self, cmd: MailboxCommand) -> None:
        await self._subscription(cmd, True)

    async def cmd_unsubscribe(self, cmd: MailboxCommand) -> None:
        await self._subscription(cmd, False)

    async def _subscription(self, cmd: MailboxCommand, subscribed: bool) -> None:
        assert self.account is not None
        try:
            self.account.set_subscribed(cmd.mailbox, subscribed)
        except FolderNotFound:
            self.send(f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't exist: {cmd.mailbox}")
            return
        self.send(f"{cmd.tag} OK {'Subscribe' if subscribed else 'Unsubscribe'} completed.")

    async def cmd_list(self, cmd: ListCommand) -> None:
        await self._list(cmd, lsub=False)

    async def cmd_lsub(self, cmd: ListCommand) -> None:
        await self._list(cmd, lsub=True)

    async def _list(self, cmd: ListCommand, lsub: bool) -> None:
        """LIST / LSUB (RFC 3501 §6.3.8-9) with LIST-EXTENDED (RFC 5258), SPECIAL-USE and LIST-STATUS."""
        assert self.account is not None
        if len(cmd.patterns) == 1 and cmd.patterns[0] == "" and not cmd.extended:
            # RFC 3501 §6.3.8: empty pattern -> hierarchy delimiter and root
            self.send(f'* {cmd.name} (\\Noselect) "{DELIMITER}" ""')
            self.send(f"{cmd.tag} OK {cmd.name.title()} completed.")
            return
        problem = listing.options_problem(cmd)
        if problem:
            self.send(f"{cmd.tag} BAD {problem}")
            return
        folders = {f.name: f for f in self.account.folders()}
        status_items = sorted(r[7:] for r in cmd.returns if r.startswith("STATUS:"))
        for name, attrs, suffix in listing.entries(cmd, lsub, folders, set(self.account.subscriptions())):
            self.send(f'* {cmd.name} ({" ".join(attrs)}) "{DELIMITER}" {self.wire_name(name)}{suffix}')
            if status_items and name in folders:
                self._send_status(name, status_items)
        self.send(f"{cmd.tag} OK {cmd.name.title()} completed.")

    async def cmd_status(self, cmd: Status) -> None:
        assert self.account is not None
        try:
            self.account.folder(cmd.mailbox)
        except FolderNotFound:
            self._no_such_mailbox(cmd.tag, cmd.mailbox)
            return
        self._send_status(cmd.mailbox, list(cmd.items))
        self.send(f"{cmd.tag} OK Status completed.")

    def _no_such_mailbox(self, tag: str, name: str) -> None:
        """NO for a missing mailbox; a parent that exists only through children is "not selectable"."""
        assert self.account is not None
        if any(f.name.startswith(name + DELIMITER) for f in self.account.folders()):
            self.send(f"{tag} NO Mailbox isn't selectable: {name}")
        else:
            self.send(f"{tag} NO Mailbox doesn't exist: {name}")  # no [NONEXISTENT] here, as Dovecot

    def _send_status(self, name: str, items: list[str]) -> None:
        assert self.account is not None
        status = self.account.status(name)
        values = {"MESSAGES": status.messages, "RECENT": status.recent, "UIDNEXT": status.uidnext,
                  "UIDVALIDITY": status.uidvalidity, "UNSEEN": status.unseen, "SIZE": status.size,
                  "HIGHESTMODSEQ": status.highestmodseq}
        if self.view is not None and self.view.name == self.account.folder(name).name:
            values["RECENT"] = len(self.view.recent) + status.recent
        order = list(values)  # a fixed order, whatever the request's (as Dovecot)
        body = " ".join(f"{item} {values[item]}" for item in sorted(set(items), key=order.index))
        self.send(f"* STATUS {self.wire_name(self.account.folder(name).name)} ({body})")

    async def cmd_append(self, cmd: Append) -> None:
        assert self.account is not None
        if not cmd.message:
            self.send(f"{cmd.tag} NO Can't save a zero byte message.")
            return
        for flag in cmd.flags:
            if not _valid_flag(flag):
                self.send(f"{cmd.tag} BAD Invalid system flag {flag}")
                return
        try:
            validity, uid = await asyncio.to_thread(
                self.account.deliver, cmd.mailbox, _crlf(cmd.message), cmd.flags, cmd.date)
        except FolderNotFound:
            self.send(f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't exist: {cmd.mailbox}")
            return
        except QuotaExceeded:
            self.send(f"{cmd.tag} NO [OVERQUOTA] Quota exceeded (mailbox for user is full)")
            return
        self.sync(allow_expunge=True)
        self.send(f"{cmd.tag} OK [APPENDUID {validity} {uid}] Append completed.")

    # ------------------------------------------------------------------ QUOTA (RFC 9208)

    def _quota_line(self) -> str | None:
        """The account's one quota root "" in 1024-octet units; None when the account is unlimited."""
        assert self.account is not None
        used, limit = self.account.quota()
        if not limit:
            return None
        return f'* QUOTA "" (STORAGE {(used + 1023) // 1024} {limit // 1024})'

    async def cmd_getquotaroot(self, cmd: QuotaCommand) -> None:
        assert self.account is not None
        try:
            name = self.account.folder(cmd.target).name
        except FolderNotFound:
            self._no_such_mailbox(cmd.tag, cmd.target)
            return
        line = self._quota_line()
        self.send(f"* QUOTAROOT {self.wire_name(name)}" + (' ""' if line else ""))
        if line:
            self.send(line)
        self.send(f"{cmd.tag} OK Getquotaroot completed.")

    async def cmd_getquota(self, cmd: QuotaCommand) -> None:
        line = self._quota_line()
        if cmd.target != "" or line is None:
            self.send(f"{cmd.tag} NO [NONEXISTENT] Quota root doesn't exist.")
            return
        self.send(line)
        self.send(f"{cmd.tag} OK Getquota completed.")

    async def cmd_setquota(self, cmd: QuotaCommand) -> None:
        # quotas are the administrator's: `mailfleet user quota` (RFC 9208 §4.3 allows refusing)
        self.send(f"{cmd.tag} NO [NOPERM] Quotas are set by the administrator.")

    async def cmd_idle(self, cmd: Command) -> None:
        # RFC 2177
        self.sync(allow_expunge=True)
        self.send("+ idling")
        await self.flush()
        line_task = asyncio.ensure_future(self.reader.readuntil(b"\n"))
        deadline = time.monotonic() + TIMEOUT_AUTH
        try:
            while True:
                self.changed.clear()
                waiter = asyncio.ensure_future(self.changed.wait())
                done, _ = await asyncio.wait({line_task, waiter}, timeout=IDLE_POLL,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if line_task in done:
                    break
                if time.monotonic() > deadline:
                    self.send("* BYE Disconnected for inactivity")
                    await self.flush()
                    raise Disconnect
                self.sync(allow_expunge=True)
                await self.flush()
            try:
                line = line_task.result()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                raise Disconnect from None
        finally:
            if not line_task.done():
                line_task.cancel()
        if line.strip().upper() != b"DONE":
            self.send(f"{cmd.tag} BAD Expected DONE")
            return
        self.sync(allow_expunge=True)
        self.send(f"{cmd.tag} OK Idle completed.")

    # ------------------------------------------------------------------ selected

    async def cmd_close(self, cmd: Command) -> None:
        assert self.view is not None and self.account is not None
        if not self.view.readonly:
            self.account.expunge(self.view.name)  # RFC 3501 §6.4.2: silently, no EXPUNGE responses
        self.view = None
        self.state = AUTHENTICATED
        self.send(f"{cmd.tag} OK Close completed.")

    async def cmd_unselect(self, cmd: Command) -> None:
        self.view = None
        self.state = AUTHENTICATED
        self.send(f"{cmd.tag} OK Unselect completed.")

    async def cmd_expunge(self, cmd: Expunge) -> None:
        assert self.view is not None and self.account is not None
        if self.view.readonly:
            self.send(f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only")
            return
        uids = None
        if cmd.sequence is not None:
            uids = self.resolve(cmd.sequence, uid=True)
        self.account.expunge(self.view.name, uids)
        self.sync(allow_expunge=True)  # reports ours and anyone else's expunges
        self.send(f"{cmd.tag} OK Expunge completed.")

    async def cmd_search(self, cmd: Search) -> None:
        assert self.view is not None and self.account is not None
        try:
            codec = searchmod.check_charset(cmd.charset)
        except searchmod.BadCharset:
            self.send(f"{cmd.tag} NO [BADCHARSET] Unknown charset {cmd.charset}")
            return
        view = self.view
        infos = {m.uid: m for m in self.account.messages(view.name)}
        need_body = searchmod.needs_message(cmd.criteria)
        header_only = not searchmod.needs_text(cmd.criteria)
        largest_uid = view.uids[-1] if view.uids else 0
        hits: list[tuple[int, MessageInfo]] = []
        for seq, uid in enumerate(view.uids, start=1):
            info = infos.get(uid)
            if info is None:
                continue
            candidate = searchmod.Candidate(
                seq, info, uid in view.recent, len(view.uids), largest_uid,
                _loader(info.file, header_only) if need_body else _no_message,
            )
            try:
                if searchmod.matches(cmd.criteria, candidate, codec):
                    hits.append((seq, info))
            except FileNotFoundError:
                continue
            if need_body and seq % 200 == 0:
                await asyncio.sleep(0)
        numbers = [info.uid if cmd.uid else seq for seq, info in hits]
        modseq_part = ""
        if searchmod.uses_modseq(cmd.criteria) and hits:
            modseq_part = f" (MODSEQ {max(info.modseq for _, info in hits)})"
        if searchmod.uses_modseq(cmd.criteria):
            self._enable_condstore()
        if cmd.returns is not None:
            self._esearch(cmd, numbers, [info.modseq for _, info in hits])
        else:
            self.send("* SEARCH" + "".join(f" {n}" for n in numbers) + modseq_part)
        self._expunges_after_uid_command(cmd.uid)
        self.send(f"{cmd.tag} OK Search completed.")

    def _esearch(self, cmd: Search, numbers: list[int], modseqs: list[int]) -> None:
        """RFC 4731 ESEARCH (RETURN () means ALL), with MODSEQ when the criteria use it (RFC 7162 §3.1.5)."""
        opts = set(cmd.returns or ()) or {"ALL"}
        parts = [f'(TAG "{cmd.tag}")']
        if cmd.uid:
            parts.append("UID")
        relevant: list[int] = []
        if numbers:
            if "MIN" in opts:
                parts.append(f"MIN {min(numbers)}")
                relevant.append(modseqs[numbers.index(min(numbers))])
            if "MAX" in opts:
                parts.append(f"MAX {max(numbers)}")
                relevant.append(modseqs[numbers.index(max(numbers))])
            if "ALL" in opts:
                parts.append("ALL " + _compress(numbers))
                relevant += modseqs
        if "COUNT" in opts:
            parts.append(f"COUNT {len(numbers)}")
            relevant += modseqs
        if searchmod.uses_modseq(cmd.criteria) and relevant:
            parts.append(f"MODSEQ {max(relevant)}")
        self.send("* ESEARCH " + " ".join(parts))

    def _enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 §3.1): announce HIGHESTMODSEQ the first time."""
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None and self.account is not None:
            highest = self.account.folder(self.view.name).highestmodseq
            self.send(f"* OK [HIGHESTMODSEQ {highest}] Highest")

    async def cmd_fetch(self, cmd: Fetch) -> None:
        assert self.view is not None and self.account is not None
        view = self.view
        uids = self.resolve(cmd.sequence, cmd.uid)
        items = list(cmd.items)
        if cmd.uid and not any(i.name == "UID" for i in items):
            items.insert(0, FetchAtt("UID"))
        if cmd.changed_since is not None or any(i.name == "MODSEQ" for i in items):
            self._enable_condstore()
        if self.condstore and not any(i.name == "MODSEQ" for i in items):
            items.append(FetchAtt("MODSEQ"))
        fetch_items = tuple(items)
        body = fetchmod.needs_body(fetch_items)
        set_seen = fetchmod.sets_seen(fetch_items) and not view.readonly
        wanted = set(uids)
        if len(wanted) * 4 < len(view.uids):
            infos = self.account.messages(view.name, wanted)
        else:
            infos = [m for m in self.account.messages(view.name) if m.uid in wanted]
        if cmd.changed_since is not None:
            infos = [m for m in infos if m.modseq > cmd.changed_since]
        if cmd.vanished:
            if not (cmd.uid and self.qresync):
                self.send(f"{cmd.tag} BAD VANISHED needs UID FETCH and ENABLE QRESYNC")
                return
            assert cmd.changed_since is not None
            gone = cmd.sequence.resolve_within(self.account.expunged_since(view.name, cmd.changed_since))
            if gone:
                self.send(f"* VANISHED (EARLIER) {_compress(gone)}")
        if set_seen:
            unseen = [m.uid for m in infos if "\\Seen" not in m.flags]
            if unseen:
                changed, _ = self.account.store_flags(view.name, unseen, ["\\Seen"], "add")
                updated = {m.uid: m for m in changed}
                infos = [updated.get(m.uid, m) for m in infos]
                fetch_items = _with_flags(fetch_items, cmd.uid)
                for m in changed:
                    view.flags[m.uid] = m.flags
        seqs = view.seq_of()
        missing = len(wanted) - len(infos) if cmd.changed_since is None else 0
        for info in infos:
            try:
                message = Message(_read(info.file)) if body else None
                parts = fetchmod.render(info, fetch_items, info.uid in view.recent, message)
            except FileNotFoundError:  # expunged by another session meanwhile
                missing += 1
                continue
            self.send(f"* {seqs[info.uid]} FETCH ({' '.join(parts)})")
            await self.maybe_flush()
        if missing and not cmd.uid:
            self.send(f"{cmd.tag} NO [EXPUNGEISSUED] Some of the requested messages no longer exist.")
            return
        self._expunges_after_uid_command(cmd.uid)
        self.send(f"{cmd.tag} OK Fetch completed.")

    async def cmd_store(self, cmd: StoreCommand) -> None:
        assert self.view is not None and self.account is not None
        view = self.view
        if view.readonly:
            self.send(f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only")
            return
        for flag in cmd.flags:
            if not _valid_flag(flag):
                self.send(f"{cmd.tag} BAD Invalid system flag {flag}")
                return
        uids = self.resolve(cmd.sequence, cmd.uid)
        if cmd.unchanged_since is not None:
            self._enable_condstore()
        changed, failed = self.account.store_flags(view.name, uids, cmd.flags, cmd.mode, cmd.unchanged_since)
        changed_by_uid = {m.uid: m for m in changed}
        new_keywords = {f for f in cmd.flags if not f.startswith("\\")} - view.keywords
        if new_keywords and cmd.mode != "remove":
            view.keywords |= new_keywords
            self.send_flags(view, permanent=True)
        seqs = view.seq_of()
        failed_set = set(failed)
        report = [u for u in uids if u not in failed_set]
        current = {m.uid: m for m in self.account.messages(view.name)} if not cmd.silent or self.condstore else {}
        for uid in report:
            info = changed_by_uid.get(uid) or current.get(uid)
            if info is None:
                continue
            view.flags[uid] = info.flags
            if cmd.silent and not (self.condstore and uid in changed_by_uid):
                continue
            parts = []
            if cmd.uid:
                parts.append(f"UID {uid}")
            if not cmd.silent:
                parts.append("FLAGS " + fetchmod.flag_list(info.flags, uid in view.recent))
            if self.condstore:
                parts.append(f"MODSEQ ({info.modseq})")
            self.send(f"* {seqs[uid]} FETCH ({' '.join(parts)})")
        if failed:
            numbers = failed if cmd.uid else [seqs[u] for u in failed if u in seqs]
            self.send(f"{cmd.tag} OK [MODIFIED {_compress(numbers)}] Conditional store failed.")
            return
        self._expunges_after_uid_command(cmd.uid)
        self.send(f"{cmd.tag} OK Store completed.")

    async def cmd_copy(self, cmd: CopyMove) -> None:
        await self._copy(cmd, move=False)

    async def cmd_move(self, cmd: CopyMove) -> None:
        await self._copy(cmd, move=True)

    async def _copy(self, cmd: CopyMove, move: bool) -> None:
        assert self.view is not None and self.account is not None
        view = self.view
        if move and view.readonly:
            self.send(f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only")
            return
        self.sync(allow_expunge=cmd.uid or move, uid_fetch=cmd.uid)
        uids = self.resolve(cmd.sequence, cmd.uid)
        try:
            self.account.folder(cmd.mailbox)
        except FolderNotFound:
            self.send(f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't exist: {cmd.mailbox}")
            return
        try:
            if move:  # also into the selected mailbox itself: new UIDs, old ones expunged (as Dovecot)
                validity, pairs = self.account.move(view.name, uids, cmd.mailbox)
            else:
                validity, pairs = self.account.copy(view.name, uids, cmd.mailbox)
        except QuotaExceeded:
            self.send(f"{cmd.tag} NO [OVERQUOTA] Quota exceeded (mailbox for user is full)")
            return
        code = ""
        if pairs:
            code = f"[COPYUID {validity} {_compress([p[0] for p in pairs])} {_compress([p[1] for p in pairs])}] "
        if move:
            if code:
                self.send(f"* OK {code}Moved UIDs.")  # RFC 6851 §4.3
            self.sync(allow_expunge=True)
            self.send(f"{cmd.tag} OK Move completed.")
            return
        self.sync(allow_expunge=cmd.uid)
        self.send(f"{cmd.tag} OK {code}Copy completed.")


_BARE_LF = re.compile(rb"(?<!\r)\n")


def _crlf(message: bytes) -> bytes:
    """Bare LF line ends become CRLF (RFC 3501 §2.2: messages are CRLF; Dovecot serves them so too),
    so that RFC822.SIZE, BODY[] and every section agree with what clients expect."""
    return _BARE_LF.sub(b"\r\n", message) if b"\n" in message else message


def _valid_flag(flag: str) -> bool:
    """Keywords are free; a backslash flag must be a system flag (RFC 3501 §2.3.2)."""
    if not flag.startswith("\\"):
        return True
    return flag.lower() in {f.lower() for f in SYSTEM_FLAGS} or flag.lower() == "\\recent"


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _loader(path: str, header_only: bool) -> Callable[[], Message]:
    """Header keys need only the header: read that much of the file, not the whole message."""
    if header_only:
        return lambda: Message(cached_header(path))
    return lambda: Message(_read(path))


def _no_message() -> Message:
    raise AssertionError("search key needs the message but none was loaded")


def _with_flags(items: tuple[FetchAtt, ...], uid: bool) -> tuple[FetchAtt, ...]:
    """Add FLAGS when a fetch set \\Seen (RFC 3501 §6.4.5), first (after UID), where Dovecot puts it."""
    if any(i.name == "FLAGS" for i in items):
        return items
    at = 1 if items and items[0].name == "UID" else 0
    return (*items[:at], FetchAtt("FLAGS"), *items[at:])


def _exists(account: Account, name: str) -> bool:
    try:
        account.folder(name)
        return True
    except FolderNotFound:
        return False


def _compress(numbers: list[int]) -> str:
    """[1,2,3,5] -> "1:3,5" (sequence-set form, in the given order for COPYUID pairing)."""
    if not numbers:
        return ""
    out = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        out.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = n
    out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)
