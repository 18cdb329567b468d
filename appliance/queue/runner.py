"""The queue runner: takes committed messages, delivers each recipient by its route, retries, bounces.

Per-recipient state lives in the spool's state log, so a restart resumes exactly where the crash left off.
4xx answers (and connection failures) are retried on the route's schedule until the queue lifetime; 5xx answers
fail the recipient at once; failed recipients are reported to the envelope sender in one RFC 3464 DSN.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.delivery.client import Framing, HostsTarget, MXTarget, RcptResult
from appliance.delivery.dsn import build_dsn
from appliance.delivery.outcome import log_outcome
from appliance.delivery.router import HOSTS, LOCAL, Route, Router
from appliance.durable.files import sync_path
from appliance.message.model import (
    DELIVERED,
    FAILED,
    META_CRLF_ONLY,
    META_DOT_FREE,
    META_DSN_FOR,
    META_TLSRPT,
    PENDING,
    QueuedMessage,
    Recipient,
    SpoolCorrupt,
    new_queue_id,
)
from appliance.queue.spool import Spool

log = logging.getLogger("appliance.queue")

BOUNCED = "bounced"  # failed and reported to the sender (or nobody to report to): final
RETRY_AFTER_FAULT = 60  # seconds after an attempt that failed on our side (spool I/O, a bug)
# A recipient of a message found damaged in the spool (RFC 3463 X.3.0: other or undefined mail system status).
LOST_IN_SPOOL = RcptResult(550, "5.3.0", "the message was damaged in this host's queue and is lost", None)

RemoteDeliver = Callable[..., Awaitable[dict[str, RcptResult]]]
LocalDeliver = Callable[[QueuedMessage, Sequence[Recipient], bytes], Awaitable[dict[str, RcptResult]]]
# The envelope sender a remote copy leaves with, from (mail_from, recipient as given, recipient): SRS for a
# recipient an alias forwarded outside (forwarding/srs.py's SenderRewrite).
SenderFor = Callable[[str, str, str], str]


def next_delay(schedule: Sequence[float], attempts: int) -> float:
    """Wait after the `attempts`-th failed attempt; the schedule's last interval repeats."""
    return schedule[min(attempts, len(schedule)) - 1]


@dataclass
class RunnerStats:
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    bounces: int = 0


class QueueRunner:
    """Schedules deliveries from the spool; one task per message in flight, bounded by `max_in_flight`."""

    def __init__(self, spool: Spool, router: Router, remote: RemoteDeliver, local: LocalDeliver | None,
                 hostname: str, lifetime: float, clock: Callable[[], float] = time.time,
                 max_in_flight: int = 200, sign: Callable[[bytes], bytes] | None = None,
                 sender_for: SenderFor | None = None) -> None:
        self.spool = spool
        self._sign = sign  # DKIM-signs what this host writes itself (DSNs); None: dkim is off
        self.sender_for = sender_for
        self.router = router
        self._remote = remote
        self._local = local
        self.hostname = hostname
        self.lifetime = lifetime
        self._clock = clock
        self._messages: dict[str, QueuedMessage] = {}
        self._heap: list[tuple[float, str]] = []
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._stopping = False
        self.stats = RunnerStats()

    def reconfigure(self, router: Router, remote: RemoteDeliver, local: LocalDeliver | None,
                    lifetime: float, sender_for: SenderFor | None = None) -> None:
        """SIGHUP: routing, the delivery functions and the queue lifetime of a new config, for every delivery
        from now on (deliveries in flight finish with what they started with)."""
        self.router = router
        self.sender_for = sender_for
        self._remote = remote
        self._local = local
        self.lifetime = lifetime

    def set_signer(self, sign: Callable[[bytes], bytes] | None) -> None:
        """SIGHUP: the DKIM signer of the DSNs from now on (None: not signed)."""
        self._sign = sign

    # ------------------------------------------------------------------ feeding

    def load_spool(self) -> int:
        """At start-up: everything the spool holds is scheduled again, at its recorded next attempt."""
        self.spool.recover()
        return sum(self.adopt(message) for message in self.spool.messages(verify=True, on_damaged=self._lost))

    def damaged(self, damaged: SpoolCorrupt) -> None:
        """A message file found damaged after start-up (the rescan): as at start, the sender is told and the file
        set aside, once."""
        self.spool.discard_damaged(damaged, self._lost)

    def _lost(self, damaged: SpoolCorrupt) -> None:
        """A message whose spool file is damaged can be neither delivered nor returned: its sender hears of it
        from a DSN without the original headers, when the envelope is still readable. The DSN is on disk before
        the file is set aside: a crash between the two repeats the DSN, never loses it."""
        message = damaged.message
        if message is None:
            return
        told = [r for r in message.recipients if r.status in (PENDING, FAILED)]
        if not told:
            return  # delivered to everyone (or reported) before the damage
        if not message.mail_from:
            log.error("queue_id=%s: lost with %d recipient(s) undelivered; null sender, no bounce",
                      message.queue_id, len(told))
            return
        results = [(r.original or r.address,
                    RcptResult(r.last_code or 550, *_split_enhanced(r.last_text), r.remote_host or None)
                    if r.status == FAILED else LOST_IN_SPOOL) for r in told]
        bounce = self._bounce_of(message)
        try:
            dsn = build_dsn(self.hostname, message.mail_from, None, results, action="failed",
                            arrival=datetime.fromtimestamp(message.arrival, UTC), queue_id=message.queue_id)
            if self._sign is not None:
                dsn = self._sign(dsn)
            self.spool.write(bounce, dsn)
            sync_path(self.spool.msg_dir)
        except (OSError, ValueError) as exc:
            log.error("queue_id=%s: cannot tell <%s> of the lost message: %s", message.queue_id,
                      message.mail_from, exc)
            return
        self.stats.bounces += 1
        log.info("queue_id=%s lost: %d recipient(s) reported to <%s> in queue_id=%s", message.queue_id, len(told),
                 message.mail_from, bounce.queue_id)
        self._add(bounce)

    def adopt(self, message: QueuedMessage) -> bool:
        """Take over a message found in the spool; one whose recipients are all final is only cleaned up."""
        if not message.pending() and not self._unreported(message):
            self.spool.remove(message.queue_id)
            return False
        self._add(message)
        return True

    def knows(self, queue_id: str) -> bool:
        return queue_id in self._messages

    def messages(self) -> list[QueuedMessage]:
        """The messages in the queue now (the web console's list; the spool files are the source of truth)."""
        return list(self._messages.values())

    def in_flight(self, queue_id: str) -> bool:
        """True while a delivery attempt of this message runs."""
        return queue_id in self._in_flight

    def enqueue(self, message: QueuedMessage) -> None:
        """A message just committed to the spool: deliver it now."""
        self._add(message)

    def _add(self, message: QueuedMessage) -> None:
        self._messages[message.queue_id] = message
        self._schedule(message)

    def _schedule(self, message: QueuedMessage) -> None:
        pending = message.pending()
        # A failure not reported yet (the process stopped before the DSN went out) is reported now.
        due = 0.0 if self._unreported(message) else min((r.next_attempt for r in pending), default=0.0)
        heapq.heappush(self._heap, (due, message.queue_id))
        self._wake.set()

    # ------------------------------------------------------------------ control (CLI through the control socket)

    def flush(self, queue_id: str | None = None) -> int:
        """Make pending recipients due now; returns how many messages that touched."""
        touched = 0
        for message in list(self._messages.values()):
            if queue_id is not None and message.queue_id != queue_id:
                continue
            for rcpt in message.pending():
                rcpt.next_attempt = 0.0
            self._schedule(message)
            touched += 1
        return touched

    def drop(self, queue_id: str) -> bool:
        message = self._messages.pop(queue_id, None)
        if message is None:
            return False
        self.spool.remove_now(queue_id)
        log.info("queue_id=%s removed by the administrator", queue_id)
        return True

    async def bounce_now(self, queue_id: str) -> bool:
        message = self._messages.get(queue_id)
        if message is None or queue_id in self._in_flight:
            return False
        self.spool.record(message, return_to_sender(message))
        await self._finish(message)
        return True

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        while not self._stopping:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                _, queue_id = heapq.heappop(self._heap)
                message = self._messages.get(queue_id)
                if message is None or queue_id in self._in_flight:
                    continue
                if not self._unreported(message) and not any(r.next_attempt <= now for r in message.pending()):
                    continue  # a stale heap entry; the message has a later one
                await self._slots.acquire()
                self._in_flight.add(queue_id)
                task = asyncio.create_task(self._attempt(message), name=f"deliver-{queue_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._wake.clear()
            timeout = max(0.05, self._heap[0][0] - self._clock()) if self._heap else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def stop(self, grace: float = 30.0) -> None:
        """Stop scheduling; let attempts in flight finish (their state is recorded) for up to `grace` seconds."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    async def _attempt(self, message: QueuedMessage) -> None:
        try:
            recorded = await self._deliver_due(message)
            if not message.pending():
                await self._finish(message, recorded)
            else:
                if self._unreported(message):
                    await self._report(message)
                self._schedule(message)
        except OSError as exc:
            # The spool's disk (full, failing) is the operator's to mend, not a bug of ours: one line, no
            # traceback. What the state log missed is at worst delivered twice after a restart, never lost.
            log.error("queue_id=%s: spool I/O failed: %s; the message stays queued, next attempt in %d s",
                      message.queue_id, exc, RETRY_AFTER_FAULT)
            self._retry_later(message)
        except Exception:  # noqa: BLE001 - the boundary: one message's bug must not stop the queue
            log.exception("queue_id=%s: delivery attempt crashed; retrying later", message.queue_id)
            self._retry_later(message)
        finally:
            self._in_flight.discard(message.queue_id)
            self._slots.release()

    def _retry_later(self, message: QueuedMessage) -> None:
        """After a failed attempt: everything again in RETRY_AFTER_FAULT seconds, a report not sent yet too
        (``_schedule`` would make that one due at once, and a disk that refused it would refuse it in a loop)."""
        due = self._clock() + RETRY_AFTER_FAULT
        for rcpt in message.pending():
            rcpt.next_attempt = due
        heapq.heappush(self._heap, (due, message.queue_id))
        self._wake.set()

    async def _deliver_due(self, message: QueuedMessage) -> bool:
        """One attempt for the recipients that are due. False when the outcome is not in the state log because
        every recipient is final and nothing is left to report: the caller then removes the message at once,
        which records it as well (a crash before either delivers the message again, never loses it)."""
        now = self._clock()
        # One group per route and envelope sender: the forwarded copies leave with their own (SRS) sender.
        groups: dict[tuple[str, str], tuple[Route, list[Recipient]]] = {}
        sender_for = self.sender_for
        for rcpt in message.pending():
            if rcpt.next_attempt <= now:
                route = self.router.route(rcpt.address)
                sender = message.mail_from
                if sender_for is not None and route.kind != LOCAL:
                    sender = sender_for(sender, rcpt.original, rcpt.address)
                groups.setdefault((route.key, sender), (route, []))[1].append(rcpt)
        if not groups:
            return True
        data = await _read(message)
        results = await asyncio.gather(*(self._deliver_group(message, route, rcpts, data, sender)
                                         for (_, sender), (route, rcpts) in groups.items()))
        changed: list[Recipient] = []
        for (route, rcpts), outcome in zip(groups.values(), results, strict=True):
            for rcpt in rcpts:
                self._apply(message, route, rcpt, outcome.get(rcpt.address) or _missing_result(rcpt))
                changed.append(rcpt)
        if not message.pending() and not self._unreported(message):
            return False  # a state file created now would be unlinked a moment later (ext4 journals both)
        self.spool.record(message, changed)
        return True

    async def _deliver_group(self, message: QueuedMessage, route: Route, rcpts: list[Recipient],
                             data: bytes, sender: str | None = None) -> dict[str, RcptResult]:
        """`sender`: the MAIL FROM of this copy (the message's own when None); DSNs still go to the message's."""
        addresses = [r.address for r in rcpts]
        try:
            if route.kind == LOCAL:
                if self._local is None:
                    return {a: RcptResult(451, "4.3.0", "local delivery is not configured here", None)
                            for a in addresses}
                return await self._local(message, rcpts, data)
            target = (HostsTarget(tuple((h.host, h.port) for h in route.hosts)) if route.kind == HOSTS
                      else MXTarget(route.domain))
            # RFC 6531 §3.4: mail received with SMTPUTF8 must only leave to peers that offer it.
            mail_from = message.mail_from if sender is None else sender
            return await self._remote(target, mail_from, addresses, data, queue_id=message.queue_id,
                                      smtputf8=True if message.smtputf8 else None,
                                      known=Framing(crlf_only=bool(message.meta.get(META_CRLF_ONLY)),
                                                    dot_free=bool(message.meta.get(META_DOT_FREE))),
                                      tls_report=bool(message.meta.get(META_TLSRPT)))
        except Exception as exc:  # noqa: BLE001 - a delivery bug is a temporary failure, never a lost message
            log.exception("queue_id=%s: delivery to %s failed unexpectedly", message.queue_id, route.key)
            return {a: RcptResult(451, "4.3.0", f"internal error: {exc.__class__.__name__}", None)
                    for a in addresses}

    def _apply(self, message: QueuedMessage, route: Route, rcpt: Recipient, result: RcptResult) -> None:
        now = self._clock()
        rcpt.attempts += 1
        rcpt.last_code = result.code
        rcpt.last_text = f"{result.enhanced} {result.text}".strip()
        rcpt.remote_host = result.remote_host or ""
        if result.ok:
            rcpt.status = DELIVERED
            self.stats.delivered += 1
        elif result.permanent:
            rcpt.status = FAILED
            self.stats.failed += 1
        else:
            rcpt.next_attempt = now + next_delay(route.retry_schedule, rcpt.attempts)
            if result.retry_after is not None:  # the destination said when (shaping: its back-off's end)
                rcpt.next_attempt = max(result.retry_after, now + 1.0)  # never a busy loop
            # Held for want of a healthy sending address: the mail never left, so it is never bounced for that.
            if rcpt.next_attempt > message.arrival + self.lifetime and not result.held:
                rcpt.status = FAILED
                rcpt.last_text = (f"4.4.7 gave up after {rcpt.attempts} attempts over "
                                  f"{_human(now - message.arrival)}; last error: {rcpt.last_text}")
                self.stats.failed += 1
            else:
                self.stats.deferred += 1
        log_outcome(message.queue_id, rcpt.address, route.key, rcpt.attempts, rcpt.status, result)

    # ------------------------------------------------------------------ bounces

    @staticmethod
    def _unreported(message: QueuedMessage) -> bool:
        return any(r.status == FAILED for r in message.recipients)

    async def _finish(self, message: QueuedMessage, recorded: bool = True) -> None:
        if self._unreported(message):
            await self._report(message)
        self._messages.pop(message.queue_id, None)
        if recorded:
            self.spool.remove(message.queue_id)
        else:  # the removal is the record of the outcome: not left for later
            self.spool.remove_now(message.queue_id, reuse=True)

    def _bounce_of(self, message: QueuedMessage) -> QueuedMessage:
        """The envelope of a DSN on ``message``: from the null sender (RFC 5321 §6.1) to its sender."""
        return QueuedMessage(queue_id=new_queue_id(), mail_from="",
                             recipients=[Recipient(address=message.mail_from, original=message.mail_from)],
                             arrival=self._clock(), client="localhost", meta={META_DSN_FOR: message.queue_id})

    async def _report(self, message: QueuedMessage) -> None:
        """Send one DSN for the recipients that failed since the last report (RFC 3464); none for <>."""
        failed = [r for r in message.recipients if r.status == FAILED]
        if message.mail_from:
            results = [(r.original or r.address, RcptResult(r.last_code or 550, *_split_enhanced(r.last_text),
                                                             r.remote_host or None))
                       for r in failed]
            data = await asyncio.to_thread(message.read_data)
            dsn = build_dsn(self.hostname, message.mail_from, data, results, action="failed",
                            queue_id=message.queue_id)
            if self._sign is not None:
                dsn = self._sign(dsn)
            bounce = self._bounce_of(message)
            await self.spool.commit(bounce, dsn)
            self.stats.bounces += 1
            log.info("queue_id=%s bounced %d recipient(s) to <%s> in queue_id=%s", message.queue_id, len(failed),
                     message.mail_from, bounce.queue_id)
            self.enqueue(bounce)
        else:
            log.info("queue_id=%s %d recipient(s) failed; null sender, no bounce", message.queue_id, len(failed))
        for rcpt in failed:
            rcpt.status = BOUNCED
        self.spool.record(message, failed)


INLINE_READ = 256 * 1024  # up to this size a read from the page cache costs less than a hop to a thread


async def _read(message: QueuedMessage) -> bytes:
    if message.size and message.size <= INLINE_READ:
        return message.read_data()
    return await asyncio.to_thread(message.read_data)


def return_to_sender(message: QueuedMessage) -> list[Recipient]:
    """`mailfleet queue bounce`: fail every pending recipient; the next report sends the DSN."""
    pending = message.pending()
    for rcpt in pending:
        rcpt.status = FAILED
        rcpt.last_code, rcpt.last_text = 550, "5.0.0 returned to sender by the administrator"
    return pending


def _missing_result(rcpt: Recipient) -> RcptResult:
    return RcptResult(451, "4.3.0", f"no result for {rcpt.address}", None)


def _split_enhanced(text: str) -> tuple[str, str]:
    """A recipient's last text ("5.1.1 mailbox gone", as recorded) as its enhanced code and the rest, so that a
    DSN names the code once (5.0.0 when the text has none)."""
    head, _, rest = text.partition(" ")
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return head, rest
    return "5.0.0", text


def _human(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{int(seconds)} seconds"


__all__ = ["BOUNCED", "DELIVERED", "FAILED", "PENDING", "QueueRunner", "next_delay"]
