"""SMTP reply codes and their default RFC 3463 enhanced status codes, shared by server, client and tests."""

from __future__ import annotations

import errno
import re

# The enhanced code a reply gets when the code that produced it gave none (RFC 2034 §3: every reply but the
# greeting, the EHLO/HELO answer and intermediate 3xx replies carries one once ENHANCEDSTATUSCODES is offered).
DEFAULT_ENHANCED = {
    220: "2.0.0", 221: "2.0.0", 235: "2.7.0", 250: "2.0.0", 251: "2.1.5", 252: "2.5.0",
    421: "4.3.0", 450: "4.2.0", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0", 534: "5.7.9",
    535: "5.7.8", 538: "5.7.11", 550: "5.0.0", 551: "5.1.6", 552: "5.3.4", 553: "5.1.3", 554: "5.0.0",
    555: "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(\s|$)")

# Replies the server itself composes.
TOO_MANY_SESSIONS = "421 4.3.2 Too many connections, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
BARE_LINE_ENDING = ("550 5.6.0 Message refused: bare CR or LF in the data; lines must end in CRLF "
                    "(RFC 5321 2.3.8)")
# RFC 5322 §3.5 (text) and RFC 2045 §2.8 (8bit data) exclude NUL; only BINARYMIME (RFC 3030) carries it, and
# it is not offered. Refused as Postfix's cleanup refuses with message_reject_characters = \0.
NUL_IN_DATA = "550 5.6.0 Message refused: NUL character in the data (RFC 5322 3.5, RFC 2045 2.8)"
# RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter on MAIL (the wording is Postfix's).
UNDECLARED_SMTPUTF8 = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
AUTH_UNAVAILABLE = "502 5.5.1 AUTH is offered on the submission ports only"
# RFC 1870 §6.1 (declared size), RFC 5321 §4.5.3.1.6 (line length) and §4.2.5 (data over the limit): the
# wording is aiosmtpd's.
SIZE_EXCEEDED = "552 Error: message size exceeds fixed maximum message size"
DATA_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 Error: Too much mail data"
TEMP_INTERNAL_ERROR = "451 4.3.0 Internal error; try again later"
TEMP_QUEUE_FAILURE = "451 4.3.0 Could not queue the message; try again later"
MAIL_SYSTEM_FULL = "452 4.3.1 Mail system full; try again later"  # RFC 3463 §3.4: X.3.1 mail system full

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def queue_failure(exc: OSError) -> str:
    """The reply to a message that could not be written: 452 4.3.1 for a full disk or quota, else 451 4.3.0."""
    return MAIL_SYSTEM_FULL if exc.errno in _DISK_FULL else TEMP_QUEUE_FAILURE


def with_enhanced(reply: str) -> str:
    """Insert the default enhanced status code into a final reply that lacks one."""
    if len(reply) < 4 or not reply[:3].isdigit() or reply[3] not in " -" or _HAS_ENHANCED.match(reply):
        return reply
    enhanced = DEFAULT_ENHANCED.get(int(reply[:3]))
    if enhanced is None:
        return reply
    return f"{reply[:4]}{enhanced} {reply[4:]}".rstrip()
