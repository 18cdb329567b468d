"""AUTHENTICATE (PLAIN, LOGIN) and UNAUTHENTICATE (RFC 5804 §2.1, §2.14).

The rules are IMAP's: plaintext mechanisms only over TLS, or on loopback when
``tls.plaintext_auth_on_loopback`` allows it; the one Authenticator of the service checks the password and
counts the failures toward the bans it shares with IMAP, POP3 and SMTP submission.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from appliance.auth.sasl import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    SaslCancelled,
    SaslError,
    decode_login_field,
    decode_plain,
)
from appliance.managesieve.commands.registry import AUTHENTICATED, NOT_AUTHENTICATED, command
from appliance.managesieve.parser import Command, ParseError, parse_sasl_response
from appliance.managesieve.response import ENCRYPT_NEEDED, status, string
from appliance.managesieve.wire import TIMEOUT_PREAUTH
from appliance.message.printable import printable

if TYPE_CHECKING:
    from appliance.managesieve.session import Session

log = logging.getLogger("appliance.managesieve")

FAILURE_DELAY = 0.5  # seconds before NO to a wrong password, as IMAP; the bans are the authenticator's
MAX_SASL = 8192  # octets of one client response


@command("AUTHENTICATE", NOT_AUTHENTICATED)
async def authenticate(session: Session, cmd: Command) -> None:
    mechanism = cmd.args[0].upper()
    if mechanism not in ("PLAIN", "LOGIN"):
        session.send(status("NO", f"Unsupported authentication mechanism {printable(mechanism, 32)}"))
        return
    if not session.plaintext_allowed():
        session.send(status("NO", "Plaintext authentication is allowed only after STARTTLS", ENCRYPT_NEEDED))
        return
    initial = cmd.args[1] if len(cmd.args) > 1 else None
    try:
        if mechanism == "PLAIN":
            username, password = decode_plain(initial if initial is not None else await _challenge(session, ""))
        else:
            username = decode_login_field(
                initial if initial is not None else await _challenge(session, LOGIN_USERNAME_CHALLENGE))
            password = decode_login_field(await _challenge(session, LOGIN_PASSWORD_CHALLENGE), "password")
    except SaslCancelled:
        session.send(status("NO", "Authentication aborted by the client"))
        return
    except (SaslError, ParseError) as exc:
        session.send(status("NO", str(exc)))
        return
    address = await session.authenticator.authenticate(username, password, session.client_ip)
    if address is None:
        await asyncio.sleep(FAILURE_DELAY)
        session.send(status("NO", "Authentication failed."))
        return
    session.user = address
    log.info("%s: logged in as %s", session.client_ip, address)
    session.send(status("OK", "Logged in."))


async def _challenge(session: Session, challenge: str) -> str:
    """One SASL round: the server's challenge as a string, the client's response string (RFC 5804 §2.1)."""
    session.send(string(challenge) + b"\r\n")
    await session.wire.flush()
    received = await session.wire.read_command(TIMEOUT_PREAUTH, MAX_SASL)
    if received.oversized:
        raise SaslError("SASL response too long")
    return parse_sasl_response(received.raw)


@command("UNAUTHENTICATE", AUTHENTICATED)
async def unauthenticate(session: Session, cmd: Command) -> None:
    log.info("%s: %s unauthenticated", session.client_ip, session.user)
    session.user = None
    session.send(status("OK", "Unauthenticate completed."))
