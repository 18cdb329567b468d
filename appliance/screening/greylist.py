"""Greylisting (off by default): the first attempt of a triplet (client network, sender, recipient) gets
``451 4.7.1``; a retry after ``delay`` and within ``retry_window`` passes, and the triplet is then known for
``lifetime``. A client network whose triplets passed ``auto_allow`` times is greylisted no more (postgrey's
--auto-whitelist-clients). The triplet and its decision are greylist_triplet.py, the state greylist_store.py.

Where it runs: at RCPT, after the recipient policy (an unknown recipient gets its 550, and no row), as postgrey
does from smtpd_recipient_restrictions. Mail from the null sender is greylisted after DATA instead: address
verification probes (Postfix's reject_unverified_sender, Exim's callouts: MAIL FROM:<>, RCPT TO, QUIT, per
Postfix's ADDRESS_VERIFICATION_README) would otherwise get 451 at RCPT and the remote site would defer its own
user's mail to us; a real bounce carries data and is deferred at the end of it.

Who is never greylisted: relay_networks (the outgoing gateway's clients), authenticated users, clients the
screening's DNSWL lists (verdict DNSWL), clients with forward-confirmed reverse DNS (verdict IPREV "pass") that
also pass SPF (verdict SPF "pass"), the ``exempt`` networks and the ``exempt_recipients``. A verdict that is not
set counts as not passed.

A state that cannot be read or written answers ``451 4.3.0`` (logged, one line): never a silent pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from appliance.config import Config
from appliance.config.model import GreylistConfig
from appliance.pipeline import verdicts
from appliance.pipeline.stages import Client, Pipeline, RcptTo, Result, Stage, Transaction, tempfail
from appliance.screening.greylist_store import GreylistStateError, GreylistStore
from appliance.screening.greylist_triplet import (
    NULL_SENDER,
    Change,
    Write,
    client_network,
    decide,
    retry_text,
    triplet_key,
)

log = logging.getLogger("appliance.screening")

STATE_FILE = "greylist.sqlite"
STATE_ERROR = "451 4.3.0 Greylisting state unavailable; try again later"

Outcome = Result | None | Awaitable[Result | None]


class Greylisting:
    """The RCPT and DATA checks, over one store."""

    def __init__(self, config: GreylistConfig, store: GreylistStore, relays: Callable[[str], bool] = lambda ip: False,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self._relays = relays
        self._clock = clock

    def rcpt(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Outcome:
        if transaction.mail_from in (NULL_SENDER, "", None) or self._skipped(client, transaction):
            return None  # the null sender: at DATA (the module docstring says why)
        if self.config.exempts_recipient(rcpt.address):
            return None
        return self._judge(client, transaction.mail_from or "", (rcpt.address,), f"<{rcpt.address}>: ")

    def data(self, client: Client, transaction: Transaction, content: bytes) -> Outcome:
        if transaction.mail_from not in (NULL_SENDER, "", None) or self._skipped(client, transaction):
            return None
        recipients = [original for original, _targets in transaction.accepted
                      if not self.config.exempts_recipient(original)]
        if not recipients:
            return None
        return self._judge(client, NULL_SENDER, tuple(dict.fromkeys(r.lower() for r in recipients)), "")

    def _skipped(self, client: Client, transaction: Transaction) -> str | None:
        """Why this client is not greylisted, or None."""
        ip = client.ip
        if client.login is not None:
            return "authenticated"
        if self._relays(ip):
            return "relay network"
        if self.config.exempts_client(ip):
            return "exempt"
        if client.verdicts.get(verdicts.DNSWL):
            return "dnswl"
        if client.verdicts.get(verdicts.IPREV) == "pass" and transaction.verdicts.get(verdicts.SPF) == "pass":
            return "iprev and spf pass"
        return None

    def _judge(self, client: Client, sender: str, recipients: Sequence[str], prefix: str) -> Outcome:
        now = self._clock()
        network = client_network(client.ip)
        keys = {triplet_key(network, sender, recipient): recipient for recipient in recipients}
        try:
            net, rows = self.store.read(network, keys)
        except GreylistStateError as exc:
            return _state_error(exc)
        changes: dict[Change, None] = {}
        waits = []
        for key, recipient in keys.items():
            decision = decide(key, network, rows.get(key), net, now, self.config)
            changes.update(dict.fromkeys(decision.changes))
            if decision.greylisted:
                waits.append(decision.wait)
                log.info("greylist: client=%s from=<%s> rcpt=<%s> greylisted (%s), retry %s", client.ip,
                         sender.strip("<>"), recipient, decision.reason, retry_text(decision.wait))
            elif decision.changes and decision.changes[0].write is Write.PASSED:
                log.info("greylist: client=%s from=<%s> rcpt=<%s> %s", client.ip, sender.strip("<>"), recipient,
                         decision.reason)
        result = None
        if waits:
            result = tempfail(f"451 4.7.1 {prefix}Greylisted: the first attempt from your network with this "
                              f"sender and recipient is deferred; try again {retry_text(max(waits))}")
        if not changes:
            return result
        return self._write(tuple(changes), now, network, result)

    async def _write(self, changes: tuple[Change, ...], now: float, network: str,
                     result: Result | None) -> Result | None:
        try:
            passes = await asyncio.to_thread(self.store.apply, changes, now, self.config)
        except GreylistStateError as exc:
            return _state_error(exc)
        if passes is not None and passes == self.config.auto_allow:
            log.info("greylist: network %s auto-allowed after %d passed triplets", network, passes)
        return result

    async def close(self) -> None:
        self.store.close()


def _state_error(exc: GreylistStateError) -> Result:
    log.warning("greylist: state unavailable (%s); answering %s", exc, STATE_ERROR[:9])
    return tempfail(STATE_ERROR)


def register(pipeline: Pipeline, config: Config) -> None:
    """Greylisting's checks, when greylisting.enabled: at RCPT, and after DATA for the null sender."""
    if not config.greylisting.enabled:
        return
    gateway = config.outgoing_gateway
    check = Greylisting(config.greylisting, GreylistStore(config.data_dir / STATE_FILE),
                        gateway.allows if gateway is not None else lambda ip: False)
    pipeline.register(Stage.RCPT, check.rcpt)
    pipeline.register(Stage.DATA, check.data)
    pipeline.on_stop(check.close)
