"""Open IMAP and POP3 connections per client address, so that one address cannot take every descriptor of the
process (anvil-like per IP; Dovecot's mail_max_userip_connections counts per user and IP, after the login).

IMAP and POP3 are served by the queue process alone, so the counts are plain in-process counts; the SMTP
acceptors share theirs through abuse/counts.py.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.config.model import LimitsConfig

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
