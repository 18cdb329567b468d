"""POP3 listeners: STLS on 110 (RFC 2595), implicit TLS on 995 (RFC 8314), one task per connection.

The server owns sockets, TLS, line limits and the autologout timer; everything the protocol decides
is in ``appliance.pop3.session``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

from appliance.auth.authenticator import Authenticator, is_loopback
from appliance.auth.connections import ConnectionLimits
from appliance.pop3.session import Pop3Session, Reply, err
from appliance.store import MailStore

log = logging.getLogger("appliance.pop3")

#: RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
IDLE_TIMEOUT = 600.0
#: SASL responses may be longer than command lines (RFC 5034 has no fixed limit); this bounds memory.
READ_LIMIT = 16384


def _host_port(item: Any, default_port: int) -> tuple[str, int]:
    """Accept config HostPort objects, (host, port) tuples or "host:port" / "[v6]:port" strings."""
    if hasattr(item, "host") and hasattr(item, "port"):
        return item.host, int(item.port)
    if isinstance(item, tuple):
        return item[0], int(item[1])
    text = str(item)
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port or default_port)
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep else (text, default_port)


class Pop3Server:
    """Shared settings of every POP3 connection of the process."""

    def __init__(
        self,
        store: MailStore,
        authenticator: Authenticator,
        ssl_context: ssl.SSLContext | None,
        hostname: str,
        plaintext_auth_on_loopback: bool,
        idle_timeout: float = IDLE_TIMEOUT,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.limits = limits if limits is not None else ConnectionLimits()
        self.store = store
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self.hostname = hostname
        self.plaintext_auth_on_loopback = plaintext_auth_on_loopback
        self.idle_timeout = idle_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        client_ip = str(peer[0])
        if not self.limits.admit(client_ip):
            log.warning("POP3: refusing a connection from %s: too many connections", client_ip)
            await self._send(writer, err("[SYS/TEMP] Too many connections from your address; try again later",
                                         close=True))
            writer.close()
            return
        try:
            await self._serve(client_ip, reader, writer, implicit_tls)
        finally:
            self.limits.release(client_ip)

    async def _serve(self, client_ip: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     implicit_tls: bool) -> None:
        session = Pop3Session(
            store=self.store,
            authenticator=self.authenticator,
            client_ip=client_ip,
            hostname=self.hostname,
            tls_active=implicit_tls,
            tls_available=self.ssl_context is not None,
            plaintext_auth_allowed=self.plaintext_auth_on_loopback and is_loopback(client_ip),
        )
        try:
            await self._converse(session, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as exc:
            log.debug("%s: connection ended: %s", client_ip, exc.__class__.__name__)
        except asyncio.CancelledError:
            # Shutdown. Swallowed on purpose: this is the connection task's top level, and Python 3.11's
            # StreamReaderProtocol callback logs a spurious "Unhandled exception" for a cancelled task.
            log.debug("%s: POP3 session cancelled by shutdown", client_ip)
        except Exception:
            # Exceptions stop at the session boundary: log once, tell the client, keep the listener.
            log.exception("%s: POP3 session failed", client_ip)
            await self._send(writer, err("[SYS/TEMP] internal server error", close=True))
        finally:
            await session.close()
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError, OSError):
                pass

    async def _converse(self, session: Pop3Session, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        reply = session.greeting()
        await self._send(writer, reply)
        while not reply.close:
            try:
                line = await self._read_line(reader)
            except TimeoutError:
                # RFC 1939 §3 autologout: close WITHOUT entering UPDATE, so nothing is deleted.
                await self._send(writer, err("autologout: idle for too long", close=True))
                return
            if line is None:
                await self._send(writer, err(f"line longer than {READ_LIMIT} octets", close=True))
                return
            if not line:
                return  # client hung up without QUIT: no UPDATE (RFC 1939 §6)
            reply = await session.handle_line(line)
            if reply.start_tls:
                # Plaintext pipelined after STLS must not be read as if it came over TLS
                # (the STARTTLS command-injection class of bugs, CVE-2011-0411).
                # No public API tells whether bytes are buffered: the StreamReader's own buffer.
                if reader._buffer:  # type: ignore[attr-defined]
                    await self._send(writer, err("data after STLS before the TLS handshake", close=True))
                    return
                await self._send(writer, reply)
                assert self.ssl_context is not None  # STLS is offered only with a context
                await writer.start_tls(self.ssl_context)
                session.tls_started()
                continue
            await self._send(writer, reply)

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes | None:
        """One line (b"" at EOF, None when over the limit); the autologout timer raises TimeoutError."""
        try:
            return await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
        except asyncio.IncompleteReadError as exc:
            return exc.partial if exc.partial.strip() else b""
        except asyncio.LimitOverrunError:
            return None

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
        if writer.is_closing():
            return
        writer.write(reply.data)
        await writer.drain()


async def start_pop3(
    listen: Iterable[Any],
    listen_tls: Iterable[Any],
    store: MailStore,
    authenticator: Authenticator,
    ssl_context: ssl.SSLContext | None,
    hostname: str,
    plaintext_auth_on_loopback: bool,
    idle_timeout: float = IDLE_TIMEOUT,
    limits: ConnectionLimits | None = None,
) -> list[asyncio.Server]:
    """Start POP3 (STLS) on every ``listen`` address and POP3S (implicit TLS) on every ``listen_tls``.

    Addresses are config ``HostPort`` objects (or "host:port" strings); port 0 picks a free port
    (tests read it from ``server.sockets``). Implicit TLS needs ``ssl_context``.
    """
    pop3 = Pop3Server(store, authenticator, ssl_context, hostname, plaintext_auth_on_loopback, idle_timeout,
                      limits)
    servers: list[asyncio.Server] = []
    listen_tls = list(listen_tls)
    if listen_tls and ssl_context is None:
        raise ValueError("POP3S listeners need a TLS context (tls.cert/tls.key or the self-signed one)")
    try:
        for item in listen:
            host, port = _host_port(item, 110)
            servers.append(await asyncio.start_server(
                lambda r, w: pop3.handle(r, w, implicit_tls=False), host, port, limit=READ_LIMIT))
            log.info("POP3 listening on %s:%d (STLS)", host, port)
        for item in listen_tls:
            host, port = _host_port(item, 995)
            servers.append(await asyncio.start_server(
                lambda r, w: pop3.handle(r, w, implicit_tls=True), host, port, limit=READ_LIMIT,
                ssl=ssl_context))
            log.info("POP3S listening on %s:%d (implicit TLS)", host, port)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers

