"""The ban at the door: a banned client (login failures, a dictionary attack, `mailfleet ban add`) gets
``421 4.7.0`` instead of the greeting, on every SMTP listener (25, 587, 465), and the connection is closed.

IMAP and POP3 refuse the same clients at their greeting through the authenticator, which reads the same store.
"""

from __future__ import annotations

import logging
import time

from appliance.auth.bans import Ban, BanStore
from appliance.pipeline.stages import Client, Result, tempfail

log = logging.getLogger("appliance.abuse")


def ban_reply(ip: str, ban: Ban) -> str:
    """The 421 a banned client reads (RFC 5321 §3.8: the server closes after it): the reason and the end, never
    the evidence."""
    until = "until lifted" if ban.until is None else time.strftime("until %Y-%m-%d %H:%M:%S UTC",
                                                                    time.gmtime(ban.until))
    return f"421 4.7.0 {ip} is banned {until} ({ban.reason}); closing connection"


class RefuseBanned:
    """The CONNECT stage's check: refuse a client covered by a ban in force."""

    def __init__(self, store: BanStore) -> None:
        self.store = store

    def __call__(self, client: Client, transaction: None, argument: None) -> Result | None:
        ban = self.store.banned(client.ip)
        if ban is None:
            return None
        log.info("client=%s refused at connect: banned (%s, %s)", client.ip, ban.reason, ban.address)
        return tempfail(ban_reply(client.ip, ban))
