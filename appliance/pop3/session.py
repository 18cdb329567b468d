"""The POP3 session state machine (RFC 1939 §3: AUTHORIZATION -> TRANSACTION -> UPDATE).

The session gets parsed commands (``appliance.pop3.parser``) and returns ``Reply`` objects; the
server (``appliance.pop3.server``) owns the socket, TLS and timeouts. Store and argon2 calls run in
worker threads so one slow mailbox never stalls other sessions.

Message numbers are fixed for the whole session (a snapshot of INBOX at login, RFC 1939 §7:
"messages ... marked as deleted are not counted"). UIDL is the store's UID and UIDVALIDITY in
Dovecot's default ``%08Xu%08Xv`` format, so a POP3 client sees the same identity as IMAP and keeps it
across sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass, field

from appliance.auth.authenticator import Authenticator
from appliance.auth.sasl import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    SaslCancelled,
    SaslError,
    decode_login_field,
    decode_plain,
)
from appliance.pop3 import multiline
from appliance.pop3.parser import Command, ParseError, parse_command
from appliance.store import MailboxLocked, MailStore, MessageInfo, MessageNotFound, StoreError

log = logging.getLogger("appliance.pop3")

SASL_MECHANISMS = ("PLAIN", "LOGIN")


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


@dataclass(frozen=True)
class Reply:
    """Bytes to send; ``close`` ends the connection after sending, ``start_tls`` upgrades it (STLS)."""

    data: bytes
    close: bool = False
    start_tls: bool = False


def ok(text: str = "") -> Reply:
    return Reply(("+OK " + text if text else "+OK").encode() + b"\r\n")


def err(text: str, close: bool = False) -> Reply:
    return Reply(b"-ERR " + text.encode("utf-8", "replace") + b"\r\n", close=close)


def uidl_of(uidvalidity: int, uid: int) -> str:
    """Dovecot's default pop3_uidl_format %08Xu%08Xv: stable while UID and UIDVALIDITY are."""
    return f"{uid:08X}{uidvalidity:08X}"


@dataclass
class Maildrop:
    """The locked INBOX of an authenticated session."""

    address: str
    uidvalidity: int
    messages: list[MessageInfo]
    lock: contextlib.ExitStack
    deleted: set[int] = field(default_factory=set)  # message numbers (1-based)
    retrieved: set[int] = field(default_factory=set)


@dataclass
class _SaslExchange:
    mechanism: str
    username: str | None = None


class Pop3Session:
    """One client's POP3 conversation; create one per connection."""

    def __init__(
        self,
        *,
        store: MailStore,
        authenticator: Authenticator,
        client_ip: str,
        hostname: str,
        tls_active: bool,
        tls_available: bool,
        plaintext_auth_allowed: bool,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.client_ip = client_ip
        self.hostname = hostname
        self.tls_active = tls_active
        self.tls_available = tls_available
        self.plaintext_auth_allowed = plaintext_auth_allowed
        self.state = State.AUTHORIZATION
        self.user: str | None = None
        self.maildrop: Maildrop | None = None
        self._sasl: _SaslExchange | None = None

    # -- connection events --------------------------------------------------------------------------

    def greeting(self) -> Reply:
        if self.authenticator.is_banned(self.client_ip):
            return err("[SYS/PERM] too many authentication failures from your address; try later", close=True)
        return ok(f"{self.hostname} Mailfleet POP3 ready")

    def tls_started(self) -> None:
        """RFC 2595 §4: after STLS the client must forget what it knew; so do we."""
        self.tls_active = True
        self.user = None

    async def close(self) -> None:
        """Connection gone: release the lock WITHOUT entering UPDATE (RFC 1939 §6: nothing is deleted)."""
        if self.maildrop is not None:
            drop, self.maildrop = self.maildrop, None
            await asyncio.to_thread(drop.lock.close)

    @property
    def auth_allowed(self) -> bool:
        """RFC 2595 §2.1: clear-text credentials only over TLS, or loopback when configured."""
        return self.tls_active or self.plaintext_auth_allowed

    # -- dispatch -----------------------------------------------------------------------------------

    async def handle_line(self, line: bytes) -> Reply:
        if self._sasl is not None:
            return await self._sasl_step(line)
        parsed = parse_command(line)
        if isinstance(parsed, ParseError):
            return err(parsed.reason)
        handler = getattr(self, f"_cmd_{parsed.name.lower()}")
        allowed = _ALLOWED[parsed.name]
        if self.state not in allowed:
            where = "after login" if self.state is State.TRANSACTION else "before login"
            return err(f"{parsed.name} is not allowed {where}")
        return await handler(parsed)

    # -- AUTHORIZATION ------------------------------------------------------------------------------

    async def _cmd_capa(self, cmd: Command) -> Reply:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
        if self.state is State.AUTHORIZATION:
            if self.auth_allowed:
                caps += ["USER", "SASL " + " ".join(SASL_MECHANISMS)]
            if self.tls_available and not self.tls_active:
                caps.append("STLS")
        caps.append("IMPLEMENTATION Mailfleet")
        return Reply(b"+OK capability list follows\r\n" + multiline.encode_lines([c.encode() for c in caps]))

    async def _cmd_stls(self, cmd: Command) -> Reply:
        if self.tls_active:
            return err("TLS is already active")
        if not self.tls_available:
            return err("STLS not available (no certificate configured)")
        return Reply(b"+OK begin TLS negotiation\r\n", start_tls=True)

    def _refuse_plaintext(self) -> Reply | None:
        if self.auth_allowed:
            return None
        return err("[AUTH] plaintext authentication is refused before STLS; use STLS or port 995")

    async def _cmd_user(self, cmd: Command) -> Reply:
        refused = self._refuse_plaintext()
        if refused:
            return refused
        self.user = cmd.text
        return ok("send PASS")

    async def _cmd_pass(self, cmd: Command) -> Reply:
        refused = self._refuse_plaintext()
        if refused:
            return refused
        if self.user is None:
            return err("USER first")
        username, self.user = self.user, None
        return await self._login(username, cmd.text or "")

    async def _cmd_auth(self, cmd: Command) -> Reply:
        if cmd.text is None:  # bare AUTH lists the mechanisms (pre-RFC 5034 clients, as Dovecot does)
            return Reply(b"+OK\r\n" + multiline.encode_lines([m.encode() for m in SASL_MECHANISMS]))
        refused = self._refuse_plaintext()
        if refused:
            return refused
        if cmd.text not in SASL_MECHANISMS:
            return err(f"unsupported SASL mechanism {cmd.text}")
        self._sasl = _SaslExchange(cmd.text)
        if cmd.initial is not None:
            return await self._sasl_step(cmd.initial.encode("ascii", "replace"))
        # RFC 5034 §4: the server sends "+ " followed by the (empty, for PLAIN) challenge.
        challenge = LOGIN_USERNAME_CHALLENGE if cmd.text == "LOGIN" else ""
        return Reply(f"+ {challenge}\r\n".encode())

    async def _sasl_step(self, line: bytes) -> Reply:
        exchange = self._sasl
        assert exchange is not None
        try:
            if exchange.mechanism == "PLAIN":
                self._sasl = None
                username, password = decode_plain(line.strip())
                return await self._login(username, password)
            if exchange.username is None:
                exchange.username = decode_login_field(line.strip(), "username")
                return Reply(f"+ {LOGIN_PASSWORD_CHALLENGE}\r\n".encode())
            self._sasl = None
            password = decode_login_field(line.strip(), "password")
            return await self._login(exchange.username, password)
        except SaslCancelled:
            self._sasl = None
            return err("authentication cancelled")
        except SaslError as exc:
            self._sasl = None
            return err(f"[AUTH] {exc}")

    async def _login(self, username: str, password: str) -> Reply:
        address = await self.authenticator.authenticate(username, password, self.client_ip)
        if address is None:
            if self.authenticator.is_banned(self.client_ip):
                return err("[AUTH] authentication failed; too many failures, try later", close=True)
            return err("[AUTH] authentication failed")
        try:
            self.maildrop = await asyncio.to_thread(self._open_maildrop, address)
        except MailboxLocked:
            log.info("%s: maildrop locked, POP3 login from %s refused", address, self.client_ip)
            return err("[IN-USE] mailbox is locked by another POP3 session")
        self.state = State.TRANSACTION
        count = len(self.maildrop.messages)
        log.info("%s: POP3 session from %s with %d message(s)", address, self.client_ip, count)
        return ok(f"logged in, {count} message(s)")

    def _open_maildrop(self, address: str) -> Maildrop:
        """Lock the account (RFC 1939 §8) and snapshot INBOX. Runs in a worker thread."""
        account = self.store.account(address)
        stack = contextlib.ExitStack()
        stack.enter_context(account.exclusive_lock("pop3"))
        try:
            uidvalidity = account.folder("INBOX").uidvalidity
            messages = account.messages("INBOX")
        except BaseException:
            stack.close()
            raise
        return Maildrop(address, uidvalidity, messages, stack)

    # -- TRANSACTION --------------------------------------------------------------------------------

    def _message(self, number: int | None) -> MessageInfo | Reply:
        drop = self.maildrop
        assert drop is not None and number is not None
        if number < 1 or number > len(drop.messages):
            return err(f"no message {number}")
        if number in drop.deleted:
            return err(f"message {number} is already deleted")
        return drop.messages[number - 1]

    def _live(self) -> list[tuple[int, MessageInfo]]:
        drop = self.maildrop
        assert drop is not None
        return [(i, m) for i, m in enumerate(drop.messages, 1) if i not in drop.deleted]

    # Sizes are the store's: exact on the wire (RFC 1939 §5) because SMTP delivery and the importers both
    # store CRLF line ends; RETR would still send a stray bare-LF file with CRLF (multiline.encode_message).
    async def _cmd_stat(self, cmd: Command) -> Reply:
        live = self._live()
        return ok(f"{len(live)} {sum(m.size for _, m in live)}")

    async def _cmd_list(self, cmd: Command) -> Reply:
        if cmd.number is not None:
            found = self._message(cmd.number)
            return found if isinstance(found, Reply) else ok(f"{cmd.number} {found.size}")
        live = self._live()
        lines = [f"{i} {m.size}".encode() for i, m in live]
        return Reply(f"+OK {len(live)} messages\r\n".encode() + multiline.encode_lines(lines))

    async def _cmd_uidl(self, cmd: Command) -> Reply:
        drop = self.maildrop
        assert drop is not None
        if cmd.number is not None:
            found = self._message(cmd.number)
            return found if isinstance(found, Reply) else ok(f"{cmd.number} {uidl_of(drop.uidvalidity, found.uid)}")
        lines = [f"{i} {uidl_of(drop.uidvalidity, m.uid)}".encode() for i, m in self._live()]
        return Reply(b"+OK unique-id listing follows\r\n" + multiline.encode_lines(lines))

    async def _read(self, number: int, info: MessageInfo) -> bytes | Reply:
        try:
            return await asyncio.to_thread(info.path.read_bytes)
        except (FileNotFoundError, MessageNotFound):
            log.info("%s: message %d (UID %d) vanished during the POP3 session", self.client_ip, number, info.uid)
            return err(f"message {number} was removed by another session")

    async def _cmd_retr(self, cmd: Command) -> Reply:
        found = self._message(cmd.number)
        if isinstance(found, Reply):
            return found
        data = await self._read(cmd.number or 0, found)
        if isinstance(data, Reply):
            return data
        assert self.maildrop is not None
        self.maildrop.retrieved.add(cmd.number or 0)
        return Reply(f"+OK {found.size} octets\r\n".encode() + multiline.encode_message(data))

    async def _cmd_top(self, cmd: Command) -> Reply:
        found = self._message(cmd.number)
        if isinstance(found, Reply):
            return found
        data = await self._read(cmd.number or 0, found)
        if isinstance(data, Reply):
            return data
        return Reply(b"+OK top of message follows\r\n" + multiline.encode_lines(
            multiline.top_lines(data, cmd.lines or 0)))

    async def _cmd_dele(self, cmd: Command) -> Reply:
        found = self._message(cmd.number)
        if isinstance(found, Reply):
            return found
        assert self.maildrop is not None
        self.maildrop.deleted.add(cmd.number or 0)
        return ok(f"message {cmd.number} deleted")

    async def _cmd_rset(self, cmd: Command) -> Reply:
        assert self.maildrop is not None
        self.maildrop.deleted.clear()
        return ok(f"{len(self.maildrop.messages)} message(s)")

    async def _cmd_noop(self, cmd: Command) -> Reply:
        return ok()

    async def _cmd_quit(self, cmd: Command) -> Reply:
        if self.state is State.AUTHORIZATION:
            return Reply(f"+OK {self.hostname} closing connection\r\n".encode(), close=True)
        self.state = State.UPDATE
        drop = self.maildrop
        assert drop is not None
        try:
            await asyncio.to_thread(self._update, drop)
        except StoreError as exc:
            log.error("%s: POP3 UPDATE failed: %s", drop.address, exc)
            return err("[SYS/TEMP] some deleted messages were not removed", close=True)
        finally:
            await self.close()
        return Reply(f"+OK {self.hostname} closing, {len(drop.deleted)} message(s) deleted\r\n".encode(),
                     close=True)

    def _update(self, drop: Maildrop) -> None:
        """RFC 1939 §6 UPDATE: remove DELEted messages; mark RETRieved ones \\Seen for IMAP, as Dovecot."""
        account = self.store.account(drop.address)
        seen = [drop.messages[n - 1].uid for n in drop.retrieved - drop.deleted]
        if seen:
            account.store_flags("INBOX", seen, ["\\Seen"], "add")
        if drop.deleted:
            account.delete_messages("INBOX", [drop.messages[n - 1].uid for n in drop.deleted])


_BOTH = frozenset({State.AUTHORIZATION, State.TRANSACTION})
_AUTHZ = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_ALLOWED: dict[str, frozenset[State]] = {
    "CAPA": _BOTH, "QUIT": _BOTH, "NOOP": _TRANS,
    "USER": _AUTHZ, "PASS": _AUTHZ, "AUTH": _AUTHZ, "STLS": _AUTHZ,
    "STAT": _TRANS, "LIST": _TRANS, "RETR": _TRANS, "DELE": _TRANS, "RSET": _TRANS, "TOP": _TRANS, "UIDL": _TRANS,
}
