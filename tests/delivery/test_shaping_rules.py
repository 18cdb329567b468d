"""The shaper's rules by themselves: which destination a delivery belongs to, the token bucket's promise,
what counts as throttling, and the config errors that name the key."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import ConfigError, parse_config
from appliance.config.model import ShapingConfig, ShapingLimits
from appliance.delivery.client import RcptResult
from appliance.delivery.shaping import Shaper, TokenBucket, covering, destination_key

LABEL = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=2, max_size=5).map(".".join)


# ---------------------------------------------------------------------------------------------- matching


@given(entry=DOMAIN, prefix=st.lists(LABEL, max_size=3))
def test_an_entry_covers_itself_and_every_name_under_it(entry: str, prefix: list[str]) -> None:
    name = ".".join([*prefix, entry])
    assert covering(name, {entry}) == entry
    assert covering(name.upper() + ".", {entry}) == entry  # DNS names: case and a trailing dot do not matter


@given(entry=DOMAIN, name=DOMAIN)
def test_an_entry_covers_nothing_beside_it(entry: str, name: str) -> None:
    """``oogle.com`` does not cover ``google.com``: names are compared by whole labels."""
    found = covering(name, {entry})
    assert (found is not None) == (name == entry or name.endswith("." + entry))


@given(outer=DOMAIN, inner=LABEL, prefix=st.lists(LABEL, max_size=2))
def test_the_most_specific_entry_wins(outer: str, inner: str, prefix: list[str]) -> None:
    specific = f"{inner}.{outer}"
    assert covering(".".join([*prefix, specific]), {outer, specific}) == specific


@given(domain=DOMAIN, mx=st.lists(DOMAIN, max_size=4), entries=st.sets(DOMAIN, max_size=4))
def test_the_key_is_an_entry_or_the_recipient_domain(domain: str, mx: list[str], entries: set[str]) -> None:
    key = destination_key(domain, mx, entries)
    if covering(domain, entries) is not None:
        assert key == covering(domain, entries)  # the recipient domain's entry comes first
    elif any(covering(name, entries) for name in mx):
        assert key == next(covering(n, entries) for n in mx if covering(n, entries))  # best MX first
    else:
        assert key == domain


def test_a_provider_entry_joins_the_domains_it_serves() -> None:
    entries = {"google.com"}
    assert destination_key("gmail.com", ["gmail-smtp-in.l.google.com"], entries) == "google.com"
    assert destination_key("example.org", ["aspmx.l.google.com", "alt1.aspmx.l.google.com"], entries) == \
        "google.com"
    assert destination_key("example.net", ["mx.example.net"], entries) == "example.net"
    assert destination_key(None, ["smarthost.example.net"], entries) == "smarthost.example.net"


# ---------------------------------------------------------------------------------------------- token bucket


@given(per_minute=st.integers(1, 600), burst=st.integers(1, 5),
       gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=60))
def test_a_bucket_never_grants_more_than_its_rate_over_any_span(per_minute: int, burst: int,
                                                                 gaps: list[float]) -> None:
    bucket = TokenBucket(per_minute, burst, now=0.0)
    now, granted = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now):
            granted.append(now)
    interval = 60.0 / per_minute
    for i, start in enumerate(granted):
        for j in range(i, len(granted)):
            span = granted[j] - start
            assert j - i + 1 <= burst + span / interval + 1e-6


@given(per_minute=st.integers(1, 600), burst=st.integers(1, 5),
       gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=60))
def test_a_bucket_grants_whenever_it_said_a_token_is_there(per_minute: int, burst: int, gaps: list[float]) -> None:
    """Waiting the time it names is enough: a delivery that waited is never turned away."""
    bucket = TokenBucket(per_minute, burst, now=0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        if not bucket.take(now):
            now += bucket.wait(now)
            assert bucket.take(now)


def test_a_full_rate_is_kept_exactly() -> None:
    bucket = TokenBucket(6, now=100.0)
    assert bucket.take(100.0) and not bucket.take(109.9)
    assert bucket.wait(105.0) == pytest.approx(5.0)
    assert bucket.take(110.0)


# ---------------------------------------------------------------------------------------------- throttling


@pytest.mark.parametrize("code, enhanced, text, throttling", [
    (421, "4.7.0", "Try again later, closing connection", True),
    (421, "4.7.28", "Our system has detected an unusual rate of mail", True),
    (451, "4.7.500", "Server busy. Please try again later", True),
    (421, "4.3.2", "Service shutting down", False),  # about the host: the retry schedule handles it
    (421, "4.3.2", "The maximum number of concurrent server connections has exceeded a limit", True),
    (450, "4.2.0", "Too many connections from your IP", True),  # a configured text
    (452, "4.5.3", "Too many recipients", False),  # the client sends the rest in a new transaction
    (450, "4.2.2", "Mailbox full", False),
    (550, "5.7.1", "Rate limited", False),  # a final answer, not a deferral
])
def test_what_counts_as_a_throttling_reply(code: int, enhanced: str, text: str, throttling: bool) -> None:
    shaper = Shaper(ShapingConfig())
    assert shaper.throttling(RcptResult(code, enhanced, text, "mx.example.net")) is throttling


def test_our_own_temporary_failures_are_never_throttling() -> None:
    shaper = Shaper(ShapingConfig())
    assert not shaper.throttling(RcptResult(421, "4.4.1", "connect to mx.example.net:25: refused", None))


async def test_a_reload_keeps_the_backoff_and_applies_new_limits() -> None:
    now = [1000.0]
    shaper = Shaper(ShapingConfig(), clock=lambda: now[0])
    shaper.observe("example.net", [RcptResult(421, "4.7.0", "slow down", "mx.example.net")])
    assert shaper.backoff_of("example.net") == 1300.0
    shaper.reconfigure(ShapingConfig(default=ShapingLimits(connections=1), max_wait=0.0))
    assert shaper.backoff_of("example.net") == 1300.0
    now[0] = 1300.0
    async with shaper.session("example.org") as first:
        assert first is None
        async with shaper.session("example.org") as second:  # the new limit: one session at a time
            assert second is not None and second.enhanced == "4.4.5" and "limit" in second.text
    async with shaper.session("example.org") as again:  # the slot was given back
        assert again is None


async def test_a_waiting_delivery_gets_the_slot_a_session_gives_back() -> None:
    shaper = Shaper(ShapingConfig(default=ShapingLimits(connections=1), max_wait=30.0))
    order: list[str] = []

    async def deliver(name: str, hold: asyncio.Event | None) -> None:
        async with shaper.session("example.net") as deferral:
            assert deferral is None
            order.append(name)
            if hold is not None:
                await hold.wait()

    hold = asyncio.Event()
    first = asyncio.create_task(deliver("first", hold))
    await asyncio.sleep(0)
    second = asyncio.create_task(deliver("second", None))
    await asyncio.sleep(0.01)
    assert order == ["first"]  # the second waits for the slot
    hold.set()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]


# ---------------------------------------------------------------------------------------------- config


def _load(shaping: object) -> ShapingConfig:
    return parse_config(yaml.safe_dump({"hostname": "out.example.net", "roles": ["outgoing_gateway"],
                                        "shaping": shaping}), check_host=False).shaping


def test_the_config_builds_the_budgets() -> None:
    config = _load({"default": {"connections": 5}, "destinations": {"Google.COM": {"messages_per_minute": 60}},
                    "backoff": "1m", "backoff_max": "1h", "throttle_texts": ["slow down"], "max_wait": "0s"})
    assert config.default == ShapingLimits(connections=5)
    assert dict(config.destinations) == {"google.com": ShapingLimits(messages_per_minute=60)}
    assert (config.backoff, config.backoff_max, config.throttle_texts, config.max_wait) == \
        (60.0, 3600.0, ("slow down",), 0.0)


@pytest.mark.parametrize("shaping, where, reason", [
    ({"default": {"connection": 2}}, "shaping.default.connection", "unknown key"),
    ({"default": {"connections": -1}}, "shaping.default.connections", "at least 0"),
    ({"destinations": {"google.com": {"messages_per_minute": "fast"}}},
     "shaping.destinations['google.com'].messages_per_minute", "expected an integer"),
    ({"destinations": {"not a domain": {}}}, "shaping.destinations['not a domain']", "not a valid domain"),
    ({"destinations": {"A.com": {}, "a.com": {}}}, "shaping.destinations['a.com']", "listed twice"),
    ({"throttle_texts": ["rate (limit"]}, "shaping.throttle_texts[0]", "not a regular expression"),
    ({"backoff": "10m", "backoff_max": "5m"}, "shaping.backoff_max", "at least backoff"),
    ({"backoff": 300}, "shaping.backoff", "expected a duration"),
])
def test_a_wrong_shaping_key_is_named(shaping: object, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _load(shaping)
    assert where in str(refused.value) and reason in str(refused.value)
