"""IMAP listeners: plain (STARTTLS, port 143) and implicit TLS (port 993)."""

from __future__ import annotations

import asyncio
import logging
import ssl

from appliance.imap.session import MAX_LINE, Authenticator, Session
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
) -> list[asyncio.base_events.Server]:
    """Start one asyncio server per address; the caller closes them (``server.close()``)."""

    def factory(tls: bool):
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
