"""ENABLE (RFC 5161) of CONDSTORE and QRESYNC (RFC 7162 §3.1, §3.2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap.commands.registry import command
from appliance.imap.parser import Enable
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
        if cap == "CONDSTORE" and not session.condstore:
            session.condstore = True
            enabled.append(cap)
            session.announce_highestmodseq()
    session.send("* ENABLED" + "".join(" " + c for c in enabled))
    session.send(f"{cmd.tag} OK Enabled.")
