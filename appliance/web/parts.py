"""What the web service sees of the running host: the parts of service/root.py's Appliance it reads and drives.

The Appliance itself is handed in; this Protocol names the attributes the web uses, so that a reload (which
swaps the config, the directory and the router) is seen by the next request without the web holding copies.
"""

from __future__ import annotations

from typing import Protocol

from appliance.auth.authenticator import Authenticator
from appliance.auth.bans import BanStore
from appliance.auth.directory import Directory
from appliance.config import Config
from appliance.egress.pool import EgressPool
from appliance.quarantine.store import Quarantine
from appliance.queue.runner import QueueRunner
from appliance.queue.spool import Spool
from appliance.store import MailStore


class Service(Protocol):
    """The running host, as the web reads it (service/root.py's Appliance)."""

    config: Config
    directory: Directory | None  # a primary's users, domains and aliases
    authenticator: Authenticator | None  # a primary's password checks (with the login cache and the bans)
    bans: BanStore  # every listener's bans, shared with the host's other processes and `mailfleet ban`
    store: MailStore | None  # a primary's mailboxes
    spool: Spool
    runner: QueueRunner | None  # the queue (the web runs in the queue process, so this is set)
    quarantine: Quarantine
    egress: EgressPool | None  # an outgoing gateway's sending addresses
