"""Dictionary attacks: a client that tries many recipients no one has gets ever slower RCPT replies (a tarpit),
then its address is banned (reason "dictionary attack").

The guard wraps the recipient check (pipeline/recipients.py) and only observes its answers: a refusal with the
enhanced code 5.1.1 (RFC 3463: bad destination mailbox address) is an unknown recipient. They are counted per
session (in the connection's verdicts) and per client address within ``bans.dictionary.window`` in the ban
store, so that an attacker spreading its guesses over sessions and acceptor processes is counted once.

Past ``session_threshold`` unknown recipients in the session, or ``ip_threshold`` from the address, every
further RCPT reply waits ``tarpit_delay``, doubled for each unknown recipient beyond the threshold, up to
``tarpit_max`` (as Postfix's smtpd_error_sleep_time past smtpd_soft_error_limit). The wait is an
``asyncio.sleep`` in the session's own task: other sessions and the event loop go on. At ``ban_after`` unknown
recipients from the address the ban starts (escalating for a repeat offender, as every ban); that RCPT and
every later one of the session get ``421 4.7.0``, and the next connection is refused at the door (banned.py).

Authenticated submission users and exempt addresses (``bans.exempt``) are neither counted nor slowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from appliance.abuse.banned import ban_reply
from appliance.auth.bans import BanStore, span
from appliance.config.model import DictionaryConfig
from appliance.pipeline.stages import Check, Client, Outcome, RcptTo, Result, Transaction, tempfail

log = logging.getLogger("appliance.abuse")

_TALLY = "dictionary"  # the connection's verdict holding its _Tally (private to this check)
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _Tally:
    """Unknown recipients seen: in this session, and from the address within the window (as this session
    last learnt it from the store)."""

    session: int = 0
    address: int = 0

    def delay(self, settings: DictionaryConfig) -> float:
        """The wait before the next RCPT reply: 0 below both thresholds."""
        excess = max(self.session - settings.session_threshold, self.address - settings.ip_threshold)
        if excess < 0:
            return 0.0
        return min(settings.tarpit_delay * 2.0 ** min(excess, 32), settings.tarpit_max)


def is_unknown_recipient(result: Outcome) -> bool:
    """The recipient check's "no such user" (550 5.1.1), as against relay denied (5.7.1) or a full mailbox."""
    if result is None or not result.refused or result.reply is None:
        return False
    code, _, rest = result.reply.partition(" ")
    return code == "550" and rest.split(" ", 1)[0] == "5.1.1"


class DictionaryGuard:
    """The RCPT stage's check in place of ``inner`` (the recipient check): its answer, slowed down or replaced
    by a 421 for a client that tries too many unknown recipients."""

    def __init__(self, inner: Check, store: BanStore, settings: DictionaryConfig,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.inner = inner
        self.store = store
        self.settings = settings
        self._sleep = sleep

    def __call__(self, client: Client, transaction: Transaction,
                 rcpt: RcptTo) -> Result | None | Awaitable[Result | None]:
        if not self.settings.enabled or client.login is not None or self.store.exempt(client.ip):
            return self.inner(client, transaction, rcpt)
        tally = client.verdicts.get(_TALLY)
        if not isinstance(tally, _Tally):
            tally = _Tally(address=self.store.unknown_recipients(client.ip))
            client.verdicts[_TALLY] = tally
        if tally.session or tally.address:  # a suspect: banned meanwhile (by another session, by hand)?
            ban = self.store.banned(client.ip)
            if ban is not None:
                return tempfail(ban_reply(client.ip, ban))
        delay = tally.delay(self.settings)
        result = self.inner(client, transaction, rcpt)
        if isinstance(result, Result | None) and not delay and not is_unknown_recipient(result):
            return result  # the common case: no store write, no task
        return self._finish(client, rcpt, tally, delay, result)

    async def _finish(self, client: Client, rcpt: RcptTo, tally: _Tally, delay: float,
                      answer: Result | None | Awaitable[Result | None]) -> Result | None:
        result = answer if isinstance(answer, Result | None) else await answer
        if is_unknown_recipient(result):
            tally.session += 1
            tally.address, ban = await asyncio.to_thread(self.store.record_unknown_recipient, client.ip,
                                                         rcpt.address)
            if ban is not None:
                return tempfail(ban_reply(client.ip, ban))
        if delay:
            log.info("client=%s tarpit: %gs before the RCPT reply (%d unknown recipients in this session, %d from "
                     "this address within %s)", client.ip, delay, tally.session, tally.address,
                     span(self.settings.window))
            await self._sleep(delay)
        return result
