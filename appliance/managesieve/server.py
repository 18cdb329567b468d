"""ManageSieve listeners (RFC 5804, port 4190): plain TCP with STARTTLS, as RFC 5804 §1.8 has it."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence

from appliance.auth.connections import ConnectionLimits
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

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        ip = str(peer[0])
        if not admitted.admit(ip):
            log.warning("ManageSieve: refusing a connection from %s: too many connections", ip)
            writer.write(b'BYE "Too many connections, try again later"\r\n')
            writer.close()
            return
        session = Session(reader, writer, scripts, authenticator, ssl_context, hostname,
                          plaintext_auth_on_loopback, limits())
        try:
            await session.run()
        except asyncio.CancelledError:
            writer.close()  # server shutdown: end quietly
        except Exception:
            log.exception("ManageSieve session from %s crashed", ip)
        finally:
            admitted.release(ip)

    servers: list[asyncio.base_events.Server] = []
    try:
        for host, port in listen:
            servers.append(await asyncio.start_server(on_connect, host, port, limit=MAX_LINE))
    except BaseException:
        for server in servers:
            server.close()
        raise
    for server in servers:
        for sock in server.sockets:
            log.info("ManageSieve listening on %s", sock.getsockname()[:2])
    return servers
