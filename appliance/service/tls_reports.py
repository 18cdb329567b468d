"""TLS-RPT in the queue process: the recorder the TLS policies report to, and the daily sending of the reports.

Once per UTC day, at a random moment within tls_reports.send_delay after midnight (RFC 8460 §4.1 asks
senders to spread their reports), the reports of every finished day not reported yet go out; the same happens
a random moment after the start, so that days missed while the service was down are caught up. Reports are
committed to this host's spool (like the runner's DSNs), so that they are delivered and retried as any mail.
`mailfleet tls-reports send` asks the running server through the control socket (``SEND_COMMAND``); with no
server running it uses ``send_now`` by itself, and the spool delivers the mail at the next start.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from appliance.config import Config
from appliance.dns.resolver import Resolver
from appliance.message.model import META_TLSRPT, QueuedMessage, Recipient, new_queue_id
from appliance.queue.spool import Spool
from appliance.tlspolicy.reports import DAY, ReportStore, TLSReportRecorder, store_path, utc_day
from appliance.tlspolicy.rua import lookup_rua
from appliance.tlspolicy.sending import ReportSender, ReportSettings, Sign, Submit

log = logging.getLogger("appliance.tlsrpt")

SEND_COMMAND = "tls-reports-send"  # the control socket's request: {"cmd", "day": "YYYY-MM-DD" | None, "force"}
FIRST_WAIT = 60.0  # the earliest a round starts after midnight or after the start


def settings_of(config: Config) -> ReportSettings:
    """tls_reports with its defaults resolved from the host name and the first primary domain."""
    section = config.tls_reports
    domains = config.primary.domains if config.primary is not None else ()
    return ReportSettings(
        submitter=config.hostname,
        organization=section.organization or config.hostname,
        contact=section.contact or f"postmaster@{domains[0] if domains else config.hostname}",
        from_address=section.from_address or f"tlsrpt@{config.hostname}",
        https_timeout=section.https_timeout,
    )


def spool_submitter(spool: Spool, enqueue: Callable[[QueuedMessage], None] | None) -> Submit:
    """Commit a report to the spool (durably: the group flush of ``Spool.commit``) and hand it to the runner
    when one runs in this process."""
    async def submit(mail_from: str, recipients: Sequence[str], data: bytes) -> None:
        message = QueuedMessage(queue_id=new_queue_id(), mail_from=mail_from,
                                recipients=[Recipient(address=r, original=r) for r in recipients],
                                arrival=time.time(), client="localhost", meta={META_TLSRPT: True})
        await spool.commit(message, data)
        log.info("queue_id=%s TLS report to %s", message.queue_id, ", ".join(recipients))
        if enqueue is not None:
            enqueue(message)
    return submit


def next_round(now: float, send_delay: float, rng: random.Random, after_start: bool = False) -> float:
    """When the next round of reports starts: a random moment within send_delay after the next midnight UTC,
    or, right after the start, within send_delay from now (for the days missed while the service was down)."""
    base = now if after_start else (now // DAY + 1) * DAY
    return base + rng.uniform(min(FIRST_WAIT, send_delay), max(FIRST_WAIT, send_delay))


def parse_day(text: str, today: str) -> str:
    """A day given on the command line: YYYY-MM-DD, over already (a report covers a whole UTC day)."""
    try:
        day = datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"--day {text!r}: expected a date YYYY-MM-DD") from None
    if day >= today:
        raise ValueError(f"--day {day}: the UTC day is not over yet (today is {today})")
    return day


class TLSReporting:
    """The recorder, the sender and the daily schedule of one queue process."""

    def __init__(self, config: Config, spool: Spool, enqueue: Callable[[QueuedMessage], None] | None,
                 sign: Sign | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = ReportStore(store_path(config.data_dir))
        self.recorder = TLSReportRecorder(self.store, clock)
        self._clock = clock
        self._rng = random.Random()
        self._lock = asyncio.Lock()  # one round at a time: the schedule and the command never both send a day
        self._tasks: list[asyncio.Task[None]] = []
        self.sender = ReportSender(self.store, settings_of(config), self._lookup(config),
                                   spool_submitter(spool, enqueue), sign, clock)
        self._config = config.tls_reports

    @staticmethod
    def _lookup(config: Config) -> Callable[[str], Any]:
        return functools.partial(lookup_rua, Resolver.from_config(config.dns).txt)

    def reconfigure(self, config: Config) -> None:
        self.sender.settings = settings_of(config)
        self.sender.lookup_rua = self._lookup(config)
        self._config = config.tls_reports

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self.recorder.run(), name="tls-reports-flush"),
                       asyncio.create_task(self._daily(), name="tls-reports-daily")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.recorder.flush()  # what the last deliveries recorded
        self.store.close()

    async def _daily(self) -> None:
        after_start = True
        while True:
            now = self._clock()
            await asyncio.sleep(next_round(now, self._config.send_delay, self._rng, after_start) - now)
            after_start = False
            try:
                await self.send_now()
            except Exception:  # the next round tries again; the queue process carries on
                log.exception("tls-reports: the round of reports failed")

    async def send_now(self, day: str | None = None, force: bool = False) -> list[str]:
        """Report ``day`` (every finished day not reported yet when None); prune the days past tls_reports.keep."""
        async with self._lock:
            self.recorder.flush()
            if day is not None:
                done = await self.sender.send_day(day, force)
            else:
                done = await self.sender.send_due(utc_day(self._clock()))
            pruned = self.store.prune(before=utc_day(self._clock() - self._config.keep))
            if pruned:
                log.info("tls-reports: pruned %d count(s) older than %.0f days", pruned, self._config.keep / DAY)
            return done

    async def send_command(self, request: dict[str, Any]) -> dict[str, Any]:
        """The control socket's SEND_COMMAND."""
        day = request.get("day")
        try:
            if day is not None:
                day = parse_day(str(day), utc_day(self._clock()))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "lines": await self.send_now(day, bool(request.get("force")))}
