"""ENABLE (RFC 5161) of CONDSTORE and QRESYNC (RFC 7162 §3.1, §3.2.3), IMAP4rev2 (RFC 9051) and UTF8=ACCEPT
(RFC 6855)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Enable
from appliance.imap.response import UTF8_NAMES
from appliance.imap.state import AUTHENTICATED

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("ENABLE", states=AUTHENTICATED)
async def enable(session: Session, cmd: Enable) -> None:
    enabled = []
    for cap in cmd.capabilities:
        if cap == "QRESYNC" and not session.qresync:
            session.qresync = True  # RFC 7162 §3.2.3: implies CONDSTORE
            enabled.append(cap)
            session.condstore = True
            continue
        if cap in ("IMAP4REV2", "UTF8=ACCEPT"):
            if _enable_utf8(session, cap):
                enabled.append("IMAP4rev2" if cap == "IMAP4REV2" else cap)
            continue
        if cap == "CONDSTORE" and not session.condstore:
            session.condstore = True
            enabled.append(cap)
            session.announce_highestmodseq()
    session.send("* ENABLED" + "".join(" " + c for c in enabled))
    session.send(f"{cmd.tag} OK Enabled.")


def _enable_utf8(session: Session, cap: str) -> bool:
    """IMAP4rev2 and UTF8=ACCEPT both make mailbox names UTF-8 (RFC 9051 §5.1, RFC 6855 §3); IMAP4rev2 also
    changes the responses (session.imap4rev2). True when the capability was not enabled yet."""
    if cap == "IMAP4REV2":
        if session.imap4rev2:
            return False
        session.imap4rev2 = True
    else:
        if session.utf8:
            return False
        session.utf8 = True
    UTF8_NAMES.set(True)
    return True
