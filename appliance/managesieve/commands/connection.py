"""CAPABILITY, NOOP, LOGOUT and STARTTLS (RFC 5804 §2.2, §2.3, §2.4, §2.11)."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from appliance.managesieve.commands.registry import ANY, NOT_AUTHENTICATED, command
from appliance.managesieve.parser import Command
from appliance.managesieve.response import status, string
from appliance.managesieve.wire import Disconnect

if TYPE_CHECKING:
    from appliance.managesieve.session import Session

log = logging.getLogger("appliance.managesieve")


@command("CAPABILITY", ANY)
async def capability(session: Session, cmd: Command) -> None:
    session.send_capabilities()
    session.send(status("OK", "Capability completed."))


@command("NOOP", ANY)
async def noop(session: Session, cmd: Command) -> None:
    # RFC 5804 §2.11: the optional string comes back in a TAG response code
    code = "TAG " + string(cmd.args[0]).decode("utf-8") if cmd.args else None
    session.send(status("OK", "Done", code))


@command("LOGOUT", ANY)
async def logout(session: Session, cmd: Command) -> None:
    session.send(status("OK", "Logout completed."))
    await session.wire.flush()
    raise Disconnect


@command("STARTTLS", NOT_AUTHENTICATED)
async def starttls(session: Session, cmd: Command) -> None:
    if session.tls:
        session.send(status("NO", "TLS is already active"))
        return
    if session.ssl_context is None:
        session.send(status("NO", "STARTTLS unavailable"))
        return
    session.wire.drop_pipelined()
    session.send(status("OK", "Begin TLS negotiation now."))
    await session.wire.flush()
    try:
        await session.wire.start_tls(session.ssl_context)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        log.info("%s: STARTTLS handshake failed: %s", session.client_ip, exc)
        raise Disconnect from None
    session.tls = True
    # RFC 5804 §2.2: after the handshake the server re-issues its capabilities, then OK
    session.send_capabilities()
    session.send(status("OK", "TLS negotiation successful."))
