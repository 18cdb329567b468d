"""ManageSieve listeners (RFC 5804, port 4190): plain TCP with STARTTLS, as RFC 5804 §1.8 has it."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence

from appliance.auth.connections import ConnectionLimits, admitting, start_listeners
from appliance.config.model import SieveConfig
from appliance.managesieve.session import Authenticator, Session
from appliance.managesieve.wire import MAX_LINE
from appliance.sieve.storage import ScriptStore

log = logging.getLogger("appliance.managesieve")


async def start_managesieve(
    listen: Sequence[tuple[str, int]],
    scripts: ScriptStore,
    authenticator: Authenticator,
    ssl_context: ssl.SSLContext | None,
    hostname: str,
    plaintext_auth_on_loopback: bool,
    limits: Callable[[], SieveConfig],
    connections: ConnectionLimits | None = None,
) -> list[asyncio.base_events.Server]:
    """One asyncio server per address; the caller closes them. ``limits`` gives the ``sieve:`` section in force
    (a reload's new limits apply from the next connection on); ``connections`` counts the connections per client
    address (the service shares IMAP's and POP3's)."""
    admitted = connections if connections is not None else ConnectionLimits()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str) -> None:
        await Session(reader, writer, scripts, authenticator, ssl_context, hostname, plaintext_auth_on_loopback,
                      limits()).run()

    handler = admitting(admitted, "ManageSieve", b'BYE "Too many connections, try again later"\r\n', log, serve)
    return await start_listeners("ManageSieve", log, [(host, port, handler, {}) for host, port in listen], MAX_LINE)
