"""Per destination shaping against real peers: BIND serves the MX records, aiosmtpd peers on 127.0.45.x count
the sessions they see and throttle as the big providers do. The shaper runs on an injected clock, so a
back-off of minutes passes in no time."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from peers.named import free_port
from waits import wait_until_async

from appliance.config.model import DeliveryConfig, ShapingConfig, ShapingLimits
from appliance.delivery.client import Deliverer, MXTarget
from appliance.delivery.router import MX, Route
from appliance.delivery.shaping import Shaper
from appliance.message.model import PENDING, QueuedMessage, Recipient
from appliance.queue.runner import QueueRunner
from appliance.queue.spool import Spool

HELO = "out.mailfleet.test"
MESSAGE = b"From: alice@sender.test\r\nSubject: hello\r\n\r\nHello.\r\n"
THROTTLE = "421 4.7.0 Try again later, closing connection"
ADDRESSES = ("127.0.45.1", "127.0.45.2", "127.0.45.3", "127.0.45.4")

ZONE = """
single           IN MX 10 mx.single
mx.single        IN A 127.0.45.1
twohosts         IN MX 10 mx1.twohosts
twohosts         IN MX 20 mx2.twohosts
mx1.twohosts     IN A 127.0.45.1
mx2.twohosts     IN A 127.0.45.4
alpha            IN MX 10 aspmx.l.provider
beta             IN MX 10 alt1.aspmx.l.provider
aspmx.l.provider IN A 127.0.45.2
alt1.aspmx.l.provider IN A 127.0.45.2
other            IN MX 10 mx.other
mx.other         IN A 127.0.45.3
"""
PROVIDER = "provider.mailfleet.test"


class FakeClock:
    """Wall-clock seconds that move only when the shaper sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class ThrottlingHandler:
    """Accepts every message, except that the MAIL FROM of the messages numbered in `throttle` (1-based)
    gets `reply` (421 4.7.0) and the connection is closed, as Gmail does. Counts sessions (EHLO), and the most
    connections at once."""

    throttle: set[int] = field(default_factory=set)
    reply: str = THROTTLE
    mails: int = 0
    delivered: list[tuple[str, ...]] = field(default_factory=list)
    sessions: int = 0
    active: int = 0
    max_active: int = 0
    hold_until_active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def opened(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def closed(self) -> None:
        with self._lock:
            self.active -= 1

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):
        self.sessions += 1  # counted here: aiosmtpd's Controller opens a connection of its own at start
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options):
        self.mails += 1
        if self.mails in self.throttle:
            asyncio.get_running_loop().call_soon(server.transport.close)  # type: ignore[union-attr]
            return self.reply
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold_until_active:  # keep the session open until as many are, so that they overlap for sure
            await wait_until_async(lambda: self.active >= self.hold_until_active or self.mails >= 10, 2.0,
                                   "sessions to overlap")
        self.delivered.append(tuple(envelope.rcpt_tos))
        return "250 2.0.0 OK"


class _CountingSMTP(SMTP):
    def connection_made(self, transport) -> None:
        self.event_handler.opened()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self.event_handler.closed()


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, hostname="peer.test", ident="peer.test ESMTP")


@pytest.fixture
def port() -> int:
    return free_port(list(ADDRESSES))


@pytest.fixture
def peer(port):
    controllers: list[Controller] = []

    def start(address: str, **kwargs) -> ThrottlingHandler:
        handler = ThrottlingHandler(**kwargs)
        controller = _Controller(handler, hostname=address, port=port)
        controller.start()
        controllers.append(controller)
        return handler

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def resolver(named_factory):
    return named_factory({"mailfleet.test": ZONE}).resolver()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def deliverer(resolver, clock: FakeClock, reuse: float = 0.0, **shaping) -> tuple[Deliverer, Shaper]:
    shaper = Shaper(ShapingConfig(**shaping), clock=clock, sleep=clock.sleep)
    settings = DeliveryConfig(connect_timeout=5, command_timeout=10, connection_reuse_time=reuse)
    return Deliverer(HELO, resolver, settings, shaper=shaper), shaper


async def send(d: Deliverer, domain: str, port: int, rcpt: str = "bob"):
    results = await d.deliver(MXTarget(f"{domain}.mailfleet.test", port), "a@sender.test",
                              [f"{rcpt}@{domain}.mailfleet.test"], MESSAGE)
    return results[f"{rcpt}@{domain}.mailfleet.test"]


async def test_a_throttled_destination_is_deferred_without_a_connection_until_the_backoff_ends(
        resolver, clock, peer, port) -> None:
    mx = peer("127.0.45.1", throttle={3, 4})
    d, _ = deliverer(resolver, clock)
    assert (await send(d, "single", port)).ok
    assert (await send(d, "single", port)).ok
    throttled = await send(d, "single", port)
    assert (throttled.code, throttled.enhanced) == (421, "4.7.0")
    assert throttled.retry_after == clock.now + 300  # the runner tries again when the back-off ends
    seen = mx.sessions
    for _ in range(3):
        deferred = await send(d, "single", port)
        assert (deferred.code, deferred.enhanced, deferred.remote_host) == (451, "4.4.5", None)
        assert "suspended until" in deferred.text and "421 4.7.0" in deferred.text
        assert deferred.retry_after == clock.now + 300
    assert mx.sessions == seen  # no connection while in back-off

    clock.now += 300
    again = await send(d, "single", port)  # still throttling: the back-off doubles
    assert again.code == 421 and again.retry_after == clock.now + 600
    clock.now += 599
    assert (await send(d, "single", port)).code == 451
    clock.now += 1
    assert (await send(d, "single", port)).ok
    assert (await send(d, "single", port)).ok  # a clean delivery ended the back-off
    assert len(mx.delivered) == 4


async def test_a_throttling_mx_is_not_followed_by_the_next_one(resolver, clock, peer, port) -> None:
    """A 4.7.x reply is about us, and every MX of the destination would say the same: no second MX is asked.
    Another domain on the same peer, a destination of its own, goes on."""
    first = peer("127.0.45.1", throttle={1})
    second = peer("127.0.45.4")
    d, _ = deliverer(resolver, clock)
    assert (await send(d, "twohosts", port)).code == 421
    assert second.sessions == 0
    assert (await send(d, "single", port)).ok
    assert first.sessions == 2


async def test_a_host_going_down_is_not_throttling_and_fails_over(resolver, clock, peer, port) -> None:
    """421 4.3.2 is about that host, not about us: the next MX takes the mail, and no back-off starts."""
    peer("127.0.45.1", throttle={1}, reply="421 4.3.2 Service shutting down")
    second = peer("127.0.45.4")
    d, shaper = deliverer(resolver, clock)
    assert (await send(d, "twohosts", port)).ok
    assert len(second.delivered) == 1
    assert shaper.backoff_of("twohosts.mailfleet.test") == 0.0


async def test_domains_with_the_same_mx_provider_share_the_backoff(resolver, clock, peer, port) -> None:
    provider = peer("127.0.45.2", throttle={1})
    other = peer("127.0.45.3")
    d, shaper = deliverer(resolver, clock, destinations={PROVIDER: ShapingLimits()})
    assert (await send(d, "alpha", port)).code == 421
    deferred = await send(d, "beta", port)  # another domain, whose MX is under the same provider name
    assert deferred.code == 451 and PROVIDER in deferred.text
    assert provider.sessions == 1
    assert (await send(d, "other", port)).ok and other.sessions == 1
    clock.now += 300
    assert (await send(d, "beta", port)).ok


async def test_texts_that_mean_slow_down_throttle_too(resolver, clock, peer, port) -> None:
    mx = peer("127.0.45.1", throttle={1}, reply="450 4.2.0 Too many connections from your IP")
    d, _ = deliverer(resolver, clock)
    assert (await send(d, "single", port)).code == 450
    assert (await send(d, "single", port)).enhanced == "4.4.5"
    assert mx.sessions == 1


async def test_too_many_recipients_is_not_throttling(resolver, clock, peer, port) -> None:
    peer("127.0.45.1", throttle={1}, reply="452 4.5.3 Too many recipients")
    d, shaper = deliverer(resolver, clock)
    assert (await send(d, "single", port)).code == 452
    assert (await send(d, "single", port)).ok
    assert shaper.backoff_of("single.mailfleet.test") == 0.0


async def test_a_connection_limit_is_kept_with_many_messages_queued(resolver, clock, peer, port) -> None:
    mx = peer("127.0.45.1", hold_until_active=2)
    d, _ = deliverer(resolver, clock, reuse=2.0, max_wait=60.0,
                     destinations={"single.mailfleet.test": ShapingLimits(connections=2)})
    results = await asyncio.gather(*(send(d, "single", port, f"u{n}") for n in range(10)))
    assert all(r.ok for r in results), results
    assert len(mx.delivered) == 10
    assert mx.max_active == 2


async def test_a_message_rate_is_kept(resolver, clock, peer, port) -> None:
    mx = peer("127.0.45.1")
    d, _ = deliverer(resolver, clock, max_wait=30.0, default=ShapingLimits(messages_per_minute=6))
    sent = []
    for _ in range(4):
        assert (await send(d, "single", port)).ok
        sent.append(clock.now)
    assert [round(b - a, 6) for a, b in zip(sent, sent[1:], strict=False)] == [10.0, 10.0, 10.0]
    assert len(mx.delivered) == 4


async def test_a_message_over_the_rate_beyond_the_wait_is_deferred_to_its_token(resolver, clock, peer,
                                                                                port) -> None:
    mx = peer("127.0.45.1")
    d, _ = deliverer(resolver, clock, max_wait=2.0, default=ShapingLimits(messages_per_minute=6))
    assert (await send(d, "single", port)).ok
    deferred = await send(d, "single", port)
    assert (deferred.code, deferred.enhanced) == (451, "4.4.5") and "rate limit" in deferred.text
    assert deferred.retry_after == pytest.approx(clock.now + 10.0)
    assert mx.sessions == 1


async def test_the_runner_keeps_throttled_mail_queued_and_retries_it_after_the_backoff(
        tmp_path, resolver, clock, peer, port) -> None:
    mx = peer("127.0.45.1", throttle={1})
    # One session at a time: the first message meets the throttle before the others connect.
    d, _ = deliverer(resolver, clock, destinations={"single.mailfleet.test": ShapingLimits(connections=1)})

    class OneRoute:
        def route(self, address: str) -> Route:
            return Route(MX, "mx:single", (3600.0,), domain="single.mailfleet.test")

    async def remote(target, *args, **kwargs):
        return await d.deliver(MXTarget(target.domain, port), *args, **kwargs)

    spool = Spool(tmp_path / "spool")
    runner = QueueRunner(spool, OneRoute(), remote, None, HELO, lifetime=5 * 86400.0,  # type: ignore[arg-type]
                         clock=clock)
    messages = [QueuedMessage(queue_id=f"Q{n}", mail_from="a@sender.test", arrival=clock.now,
                              recipients=[Recipient(f"u{n}@single.mailfleet.test", f"u{n}@single.mailfleet.test")])
                for n in range(3)]
    for message in messages:
        spool.write(message, MESSAGE)
        runner.enqueue(message)
    task = asyncio.create_task(runner.run())
    try:
        await wait_until_async(lambda: runner.stats.deferred == 3, what="three deferrals")
        assert mx.sessions == 1 and runner.stats.failed == 0 and runner.stats.bounces == 0
        for message in messages:  # queued, due when the back-off ends, not on the one-hour schedule
            assert [(r.status, r.next_attempt) for r in message.recipients] == [(PENDING, clock.now + 300)]
        clock.now += 300
        runner.flush()  # the loop sleeps on real time; what is due on the clock goes now
        await wait_until_async(lambda: runner.stats.delivered == 3, what="the retries after the back-off")
        assert len(mx.delivered) == 3 and runner.stats.bounces == 0
    finally:
        await runner.stop(grace=5)
        task.cancel()


async def test_no_shaper_no_backoff(resolver, peer, port) -> None:
    """shaping.enabled: false builds no shaper: a throttled destination is asked again at once."""
    mx = peer("127.0.45.1", throttle={1})
    d = Deliverer(HELO, resolver, DeliveryConfig(connect_timeout=5, command_timeout=10, connection_reuse_time=0))
    assert (await send(d, "single", port)).code == 421
    assert (await send(d, "single", port)).ok
    assert mx.sessions == 2
