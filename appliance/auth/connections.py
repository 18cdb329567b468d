"""Open IMAP and POP3 connections per client address, so that one address cannot take every descriptor of the
process (anvil-like per IP; Dovecot's mail_max_userip_connections counts per user and IP, after the login).

IMAP and POP3 are served by the queue process alone, so the counts are plain in-process counts; the SMTP
acceptors share theirs through abuse/counts.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from appliance.config.model import LimitsConfig

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

MAX_CONNECTIONS = 2000  # all IMAP and POP3 connections of this process


def _nobody(ip: str) -> bool:
    return False


class ConnectionLimits:
    """Counts open connections per client address; an address for which `exempt(ip)` is true counts only
    toward the total."""

    def __init__(self, total: int = MAX_CONNECTIONS, per_ip: int = LimitsConfig.mailbox_sessions,
                 exempt: Callable[[str], bool] = _nobody) -> None:
        self.total = total
        self.open: dict[str, int] = {}
        self.per_ip = per_ip
        self.exempt = exempt

    def reconfigure(self, per_ip: int, exempt: Callable[[str], bool]) -> None:
        """A reload: the connections open stay, the new limit applies to the next ones."""
        self.per_ip = per_ip
        self.exempt = exempt

    def admit(self, ip: str) -> bool:
        count = self.open.get(ip, 0)
        if sum(self.open.values()) >= self.total:
            return False
        if self.per_ip and count >= self.per_ip and not self.exempt(ip):
            return False
        self.open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        left = self.open.get(ip, 1) - 1
        if left:
            self.open[ip] = left
        else:
            self.open.pop(ip, None)


def admitting(limits: ConnectionLimits, protocol: str, bye: bytes, log: logging.Logger,
              serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]) -> Handler:
    """The connection handler of a mailbox-access listener (IMAP, ManageSieve): a client past ``limits`` gets
    ``bye`` and is closed; otherwise ``serve(reader, writer, ip)`` runs the session, which ends quietly at a
    server shutdown, and whose exceptions stop here (logged once, the listener lives on)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        ip = str(peer[0])
        if not limits.admit(ip):
            log.warning("%s: refusing a connection from %s: too many connections", protocol, ip)
            writer.write(bye)
            writer.close()
            return
        try:
            await serve(reader, writer, ip)
        except asyncio.CancelledError:
            writer.close()  # server shutdown: the connection task is the top of this call chain
        except Exception:  # noqa: BLE001 - the session boundary
            log.exception("%s session from %s crashed", protocol, ip)
        finally:
            limits.release(ip)

    return on_connect


async def start_listeners(protocol: str, log: logging.Logger,
                          listeners: Iterable[tuple[str, int, Handler, dict[str, Any]]],
                          limit: int) -> list[asyncio.base_events.Server]:
    """One asyncio server per (host, port, handler, start_server options); all or none: a failure closes the
    ones already open."""
    servers: list[asyncio.base_events.Server] = []
    try:
        for host, port, handler, options in listeners:
            servers.append(await asyncio.start_server(handler, host, port, limit=limit, **options))
    except BaseException:
        for server in servers:
            server.close()
        raise
    for server in servers:
        for sock in server.sockets:
            log.info("%s listening on %s", protocol, sock.getsockname()[:2])
    return servers
