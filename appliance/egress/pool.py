"""The pool of sending addresses: which address a new connection leaves from, and when an address is suspended or
comes back.

A connection leaves from the FIRST healthy address of its family in config order, so that the traffic stays on
one address (its reputation, its PTR, the receivers' memory of it) and moves only on failover. An address is
suspended when

- a DNSBL round finds it listed in one of ``failover.dnsbl`` (RFC 5782; see dnsbl.py);
- ``failover.rejection_threshold`` different destinations refused it with a blocking reply within the window
  (see rejections.py);
- the host cannot bind it (EADDRNOTAVAIL: not an address of this host);
- an administrator says so (``mailfleet egress suspend``; that one is held until resumed by hand).

A suspended address takes no new connection. Every round re-checks the automatic suspensions: one that every
zone (and, for an address that could not be bound, a test bind) finds clear for ``failover.clear_for`` comes
back, at most ``failover.max_changes_per_day`` times in 24 hours: coming and going faster is what snowshoe
spamming looks like, and a listing that returns within the day is a real one. When every address of a family
is suspended the pool picks none: the deliveries are held in the queue (never bounced for it) and an ALERT is
logged once. Every change is logged (appliance.egress) with its evidence, and kept in the state store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence

from appliance.config.model import DNSConfig, EgressAddress, EgressFailoverConfig
from appliance.dns.resolver import address_family
from appliance.egress.dnsbl import CLEAR, LISTED, UNKNOWN, BlocklistLookup, Verdict
from appliance.egress.rejections import RejectionCounts, RejectionTable
from appliance.egress.store import ADMIN, AUTO, AddressState, EgressStore, healthy

log = logging.getLogger("appliance.egress")

DNSBL = "dnsbl"
REJECTIONS = "rejections"
NOT_LOCAL = "not local"
DAY = 86400.0


def can_bind(address: str) -> OSError | None:
    """None when this host can bind `address` now; the error otherwise."""
    try:
        with socket.socket(address_family(address), socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        return exc
    return None


def _family_name(family: socket.AddressFamily) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


class EgressPool:
    """The sending addresses of the outgoing gateway (delivery.sources.SendingAddresses)."""

    def __init__(self, addresses: Sequence[EgressAddress], failover: EgressFailoverConfig, store: EgressStore,
                 dns: DNSConfig, clock: Callable[[], float] = time.time,
                 bind_check: Callable[[str], OSError | None] = can_bind) -> None:
        self.store = store
        self._clock = clock
        self._bind_check = bind_check
        self._states: dict[str, AddressState] = {}
        self._alerted: set[socket.AddressFamily] = set()
        self._held_back: set[str] = set()  # addresses kept suspended by max_changes_per_day (logged once)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.reconfigure(addresses, failover, dns)

    def reconfigure(self, addresses: Sequence[EgressAddress], failover: EgressFailoverConfig,
                    dns: DNSConfig) -> None:
        """Start or SIGHUP: the addresses, their order and the failover settings; the states stay."""
        self.addresses = tuple(addresses)
        self.settings = failover
        self._by_family: dict[socket.AddressFamily, tuple[EgressAddress, ...]] = {}
        for entry in self.addresses:
            family = address_family(entry.address)
            self._by_family[family] = (*self._by_family.get(family, ()), entry)
        self.families = frozenset(self._by_family)
        self._table = RejectionTable(failover.rejection_texts)
        self._counts = RejectionCounts(failover.rejection_window)
        self._lookup = BlocklistLookup(dns)
        self._wake.set()

    # ------------------------------------------------------------------ what the delivery client asks

    def pick(self, family: socket.AddressFamily, destination: str) -> EgressAddress | None:
        self._refresh()
        for entry in self._by_family.get(family, ()):
            if not self._suspended(entry.address):
                self._alerted.discard(family)
                return entry
        if family not in self._alerted:
            self._alerted.add(family)
            log.error("ALERT: no healthy sending address for %s: every %s egress address is suspended (%s); "
                      "mail stays queued", destination or "-", _family_name(family),
                      "; ".join(f"{e.address}: {self.state(e.address).why}"
                                for e in self._by_family.get(family, ())))
        return None

    def observe(self, address: str, destination: str, reply: str) -> bool:
        if not self._table.blocked(reply):
            return False
        refused = self._counts.add(address, destination, reply, self._clock())
        log.info("egress %s: %s refused it as blocked (%d of %d destinations within %gs): %s", address,
                 destination, len(refused), self.settings.rejection_threshold, self.settings.rejection_window,
                 reply[:300])
        if len(refused) >= self.settings.rejection_threshold:
            evidence = "; ".join(f"{d}: {text[:200]}" for d, text in sorted(refused.items()))
            if self._suspend(address, REJECTIONS, evidence):
                self._counts.forget(address)
        return True

    def bind_failed(self, address: str, error: OSError) -> None:
        self._suspend(address, NOT_LOCAL, f"cannot bind it: {error.strerror or error}")

    # ------------------------------------------------------------------ states

    def state(self, address: str) -> AddressState:
        return self._states.get(address) or healthy(address)

    def _suspended(self, address: str) -> bool:
        state = self._states.get(address)
        return state is not None and state.suspended

    def _refresh(self) -> None:
        """Read the store again when another connection changed it (another process, `mailfleet egress`)."""
        if self.store.changed():
            self._reload()

    def _reload(self) -> None:
        """After a change of our own: SQLite's data_version does not count the commits of its own connection."""
        self._states = self.store.states()

    def _suspend(self, address: str, why: str, evidence: str) -> bool:
        state = self.store.suspend(address, why, evidence, AUTO, self._clock())
        self._reload()
        if state is None:
            return False
        log.warning("egress %s suspended (%s): %s", address, why, evidence)
        return True

    # ------------------------------------------------------------------ the re-checks

    def start(self) -> None:
        """Run the DNSBL rounds in the background (queue process); the first round at once."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="egress-checks")

    async def stop(self) -> None:
        """End the rounds and close the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.store.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - a bug in one round must not stop the next ones
                log.exception("egress: the check round failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.check_interval)

    async def check(self) -> None:
        """One round: every address against every zone; suspensions and returns follow."""
        self._refresh()
        zones = self.settings.dnsbl
        rounds = await asyncio.gather(*(asyncio.gather(*(self._lookup.ask(e.address, z) for z in zones))
                                        for e in self.addresses))
        now = self._clock()
        for entry, verdicts in zip(self.addresses, rounds, strict=True):
            self._judge(entry.address, list(verdicts), now)

    def _judge(self, address: str, verdicts: list[Verdict], now: float) -> None:
        listed = [v for v in verdicts if v.outcome == LISTED]
        for verdict in verdicts:
            if verdict.outcome == UNKNOWN:  # a refusal to answer (a resolver the zone refuses), a timeout
                log.info("egress %s: no verdict from %s", address, verdict)
        state = self.state(address)
        if not state.suspended:
            if listed:
                self._suspend(address, DNSBL, "listed in " + "; ".join(f"{v.zone} ({v.detail})" for v in listed))
            return
        if state.source == ADMIN:
            return  # held until the administrator resumes it
        outcome = _round_outcome(verdicts)
        if outcome == CLEAR and state.why == NOT_LOCAL:
            error = self._bind_check(address)
            if error is not None:
                outcome = LISTED  # still not an address of this host: the streak starts again
        if outcome == UNKNOWN:
            return
        if outcome == LISTED:
            if state.clear_since is not None:
                self.store.set_clear_since(address, None)
                self._reload()
            return
        if state.clear_since is None:
            self.store.set_clear_since(address, now)
            self._reload()
            return
        if now - state.clear_since >= self.settings.clear_for:
            self._come_back(address, state, now)

    def _come_back(self, address: str, state: AddressState, now: float) -> None:
        returns = self.store.returns_since(address, now - DAY)
        if returns >= self.settings.max_changes_per_day:
            if address not in self._held_back:
                self._held_back.add(address)
                log.warning("egress %s stays suspended though clear: it came back %d time(s) within 24h "
                            "(failover.max_changes_per_day %d)", address, returns,
                            self.settings.max_changes_per_day)
            return
        self._held_back.discard(address)
        evidence = f"clear for {now - state.clear_since:g}s since {state.why}: {state.evidence}"[:500] \
            if state.clear_since is not None else state.evidence
        if self.store.resume(address, evidence, AUTO, now) is not None:
            log.warning("egress %s resumed: %s", address, evidence)
        self._reload()


def _round_outcome(verdicts: list[Verdict]) -> str:
    """LISTED when any zone lists it; UNKNOWN when a zone did not say; CLEAR when every zone (or none) is clear."""
    outcomes = {v.outcome for v in verdicts}
    if LISTED in outcomes:
        return LISTED
    if UNKNOWN in outcomes:
        return UNKNOWN
    return CLEAR
