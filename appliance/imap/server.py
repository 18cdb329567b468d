"""IMAP listeners: plain (STARTTLS, port 143) and implicit TLS (port 993)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from appliance.auth.connections import ConnectionLimits
from appliance.imap.session import Authenticator, Session
from appliance.imap.wire import MAX_LINE
from appliance.store import MailStore

log = logging.getLogger("appliance.imap")


async def start_imap(
    listen: list[tuple[str, int]],
    listen_tls: list[tuple[str, int]],
    store: MailStore,
    authenticator: Authenticator,
    ssl_context: ssl.SSLContext,
    hostname: str,
    plaintext_auth_on_loopback: bool,
    limits: ConnectionLimits | None = None,
) -> list[asyncio.base_events.Server]:
    """Start one asyncio server per address; the caller closes them (``server.close()``). `limits` counts the
    connections per client address (shared with POP3 by the service)."""

    if limits is None:
        limits = ConnectionLimits()

    def factory(tls: bool) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername") or ("unknown", 0)
            ip = str(peer[0])
            if not limits.admit(ip):
                log.warning("IMAP: refusing a connection from %s: too many connections", ip)
                writer.write(b"* BYE Too many connections, try again later\r\n")
                writer.close()
                return
            session = Session(reader, writer, store, authenticator, ssl_context, hostname,
                              plaintext_auth_on_loopback, tls)
            try:
                await session.run()
            except asyncio.CancelledError:
                # server shutdown: end quietly (the connection task is the top of this call chain)
                writer.close()
            except Exception:
                # exceptions stop at the session boundary: log once, keep the listener alive
                log.exception("IMAP session from %s crashed", session.client_ip)
            finally:
                limits.release(ip)

        return on_connect

    if listen_tls and ssl_context is None:
        raise ValueError("IMAP: implicit-TLS listeners (imaps) need a TLS certificate (tls.cert / tls.key)")
    servers: list[asyncio.base_events.Server] = []
    try:
        for host, port in listen:
            servers.append(await asyncio.start_server(factory(False), host, port, limit=MAX_LINE))
        for host, port in listen_tls:
            servers.append(await asyncio.start_server(factory(True), host, port, limit=MAX_LINE,
                                                      ssl=ssl_context, ssl_handshake_timeout=30))
    except BaseException:
        for server in servers:
            server.close()
        raise
    for server in servers:
        for sock in server.sockets:
            log.info("IMAP listening on %s", sock.getsockname()[:2])
    return servers
