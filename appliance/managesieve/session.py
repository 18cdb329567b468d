"""One ManageSieve connection: the RFC 5804 state machine (not authenticated -> authenticated -> logout) on top
of the pure parser.

Each command is read whole by ``wire.Wire`` (literals included), parsed by ``parser.parse_command``, looked up
in the command registry (which names the state it is allowed in) and handed to its handler. Every error is a NO
with a one-line reason (ManageSieve has no BAD); an exception stops here: logged once, answered NO, the
connection kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Protocol

from appliance.auth.authenticator import is_loopback
from appliance.config.model import SieveConfig
from appliance.managesieve import checker
from appliance.managesieve.commands import REGISTRY
from appliance.managesieve.parser import ParseError, parse_command
from appliance.managesieve.response import QUOTA_MAXSIZE, TRYLATER, status, string
from appliance.managesieve.wire import TIMEOUT_AUTH, TIMEOUT_PREAUTH, Disconnect, Received, Wire
from appliance.sieve.storage import ScriptNameError, ScriptStore

log = logging.getLogger("appliance.managesieve")

IMPLEMENTATION = "Mailfleet"
MAX_PREAUTH_LITERAL = 8192  # octets: before login only AUTHENTICATE carries data


class Authenticator(Protocol):
    def is_banned(self, client_ip: str) -> bool: ...

    async def authenticate(self, username: str, password: str, client_ip: str) -> str | None: ...


class Session:
    """The connection's state: TLS or not, and who is logged in."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        scripts: ScriptStore,
        authenticator: Authenticator,
        ssl_context: ssl.SSLContext | None,
        hostname: str,
        plaintext_auth_on_loopback: bool,
        limits: SieveConfig,
    ) -> None:
        self.wire = Wire(reader, writer)
        self.send = self.wire.send
        self.scripts = scripts
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self.hostname = hostname
        self.plaintext_loopback = plaintext_auth_on_loopback
        self.limits = limits
        self.tls = False
        self.client_ip = self.wire.peer_ip()
        self.user: str | None = None

    async def run(self) -> None:
        wire = self.wire
        try:
            if self.authenticator.is_banned(self.client_ip):
                await wire.bye("Too many authentication failures from your address, try again later")
            self.send_capabilities()
            self.send(status("OK", f"{self.hostname} {IMPLEMENTATION} ManageSieve ready."))
            await wire.flush()
            while True:
                if self.user is None:
                    received = await wire.read_command(TIMEOUT_PREAUTH, MAX_PREAUTH_LITERAL)
                else:
                    received = await wire.read_command(TIMEOUT_AUTH, self.limits.max_script_size)
                await self.handle(received)
                await wire.flush()
        except (Disconnect, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                wire.close()

    async def handle(self, received: Received) -> None:
        if received.oversized:
            limit = self.limits.max_script_size if self.user is not None else MAX_PREAUTH_LITERAL
            self.send(status("NO", f"Literal larger than the limit of {limit} octets", QUOTA_MAXSIZE))
            return
        try:
            cmd = parse_command(received.raw)
        except ParseError as exc:
            self.send(status("NO", exc.reason))
            return
        spec = REGISTRY[cmd.name]  # every name the parser accepts is registered
        refusal = spec.refusal(self.user is not None)
        if refusal:
            self.send(status("NO", f"{cmd.name}: {refusal}"))
            return
        try:
            await spec.handler(self, cmd)
        except (Disconnect, ConnectionError, ssl.SSLError):
            raise
        except ScriptNameError as exc:
            self.send(status("NO", str(exc)))
        except OSError as exc:
            log.error("ManageSieve %s for %s: storage failed: %s", cmd.name, self.user, exc)
            self.send(status("NO", "The script storage failed, try again later", TRYLATER))
        except Exception:
            log.exception("ManageSieve command %s failed for %s", cmd.name, self.user or self.client_ip)
            self.send(status("NO", "Internal error; the server log has the details"))

    def plaintext_allowed(self) -> bool:
        """IMAP's rule (``tls.plaintext_auth_on_loopback``): PLAIN and LOGIN over TLS, or on loopback."""
        return self.tls or (self.plaintext_loopback and is_loopback(self.client_ip))

    def send_capabilities(self) -> None:
        """RFC 5804 §1.7: the capability lines of the greeting, CAPABILITY and after STARTTLS."""
        caps: list[tuple[str, str | None]] = [("IMPLEMENTATION", IMPLEMENTATION)]
        if self.user is None:
            caps.append(("SASL", "PLAIN LOGIN" if self.plaintext_allowed() else ""))
        caps.append(("SIEVE", " ".join(checker.extensions())))
        if not self.tls and self.ssl_context is not None and self.user is None:
            caps.append(("STARTTLS", None))
        caps.append(("MAXREDIRECTS", str(self.limits.max_redirects)))
        if self.user is not None:
            caps.append(("OWNER", self.user))
        caps += [("UNAUTHENTICATE", None), ("VERSION", "1.0")]
        for name, value in caps:
            self.send(string(name) + (b" " + string(value) if value is not None else b"") + b"\r\n")
