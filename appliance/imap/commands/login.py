"""STARTTLS, LOGIN and AUTHENTICATE PLAIN: the not-authenticated state's commands (RFC 3501 §6.2)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from appliance.auth.sasl import SaslCancelled, SaslError, decode_plain
from appliance.imap.commands.registry import command
from appliance.imap.parser import Authenticate, Command, Login
from appliance.imap.state import NOT_AUTHENTICATED
from appliance.imap.wire import TIMEOUT_PREAUTH, Disconnect

if TYPE_CHECKING:
    from appliance.imap.session import Session

log = logging.getLogger("appliance.imap")

FAILURE_DELAY = 0.5  # seconds before NO to a wrong password: slows guessing a little; bans are the authenticator's
PRIVACY_REQUIRED = "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."


@command("STARTTLS", states=NOT_AUTHENTICATED)
async def starttls(session: Session, cmd: Command) -> None:
    if session.tls or session.ssl_context is None:
        session.send(f"{cmd.tag} BAD TLS is already active" if session.tls else f"{cmd.tag} BAD STARTTLS unavailable")
        return
    session.wire.drop_pipelined()
    session.send(f"{cmd.tag} OK Begin TLS negotiation now.")
    await session.wire.flush()
    try:
        await session.wire.start_tls(session.ssl_context)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        log.info("%s: STARTTLS handshake failed: %s", session.client_ip, exc)
        raise Disconnect from None
    session.tls = True


@command("LOGIN", states=NOT_AUTHENTICATED)
async def login(session: Session, cmd: Login) -> None:
    if not session.plaintext_allowed():
        session.send(f"{cmd.tag} {PRIVACY_REQUIRED}")
        return
    await _authenticate(session, cmd.tag, cmd.username, cmd.password)


@command("AUTHENTICATE", states=NOT_AUTHENTICATED)
async def authenticate(session: Session, cmd: Authenticate) -> None:
    if cmd.mechanism != "PLAIN":
        session.send(f"{cmd.tag} NO Unsupported authentication mechanism.")
        return
    if not session.plaintext_allowed():
        session.send(f"{cmd.tag} {PRIVACY_REQUIRED}")
        return
    response = cmd.initial
    if response is None:
        await session.wire.continuation("")
        line = await session.wire.readline(TIMEOUT_PREAUTH)
        response = line.decode("ascii", "replace").strip()
    try:
        username, password = decode_plain(response)
    except SaslCancelled:
        session.send(f"{cmd.tag} BAD Authentication aborted by client.")
        return
    except SaslError as exc:
        session.send(f"{cmd.tag} BAD {exc}")
        return
    await _authenticate(session, cmd.tag, username, password)


async def _authenticate(session: Session, tag: str, username: str, password: str) -> None:
    address = await session.authenticator.authenticate(username, password, session.client_ip)
    if address is None:
        await asyncio.sleep(FAILURE_DELAY)
        session.send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.")
        return
    account = await asyncio.to_thread(session.store.account, address)
    session.logged_in(address, account)
    log.info("%s: logged in as %s", session.client_ip, address)
    session.send(f"{tag} OK [CAPABILITY {session.capabilities()}] Logged in")
