"""IMAP listeners: plain (STARTTLS, port 143) and implicit TLS (port 993)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from appliance.auth.connections import ConnectionLimits, Handler, admitting, start_listeners
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

    admitted = limits if limits is not None else ConnectionLimits()

    def factory(tls: bool) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str) -> None:
            await Session(reader, writer, store, authenticator, ssl_context, hostname, plaintext_auth_on_loopback,
                          tls).run()

        return admitting(admitted, "IMAP", b"* BYE Too many connections, try again later\r\n", log, serve)

    if listen_tls and ssl_context is None:
        raise ValueError("IMAP: implicit-TLS listeners (imaps) need a TLS certificate (tls.cert / tls.key)")
    plain, implicit = factory(False), factory(True)
    tls_options: dict[str, Any] = {"ssl": ssl_context, "ssl_handshake_timeout": 30}
    listeners: list[tuple[str, int, Handler, dict[str, Any]]] = [(host, port, plain, {}) for host, port in listen]
    listeners += [(host, port, implicit, tls_options) for host, port in listen_tls]
    return await start_listeners("IMAP", log, listeners, MAX_LINE)
