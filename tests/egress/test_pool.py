"""The pool without a running service: the delivery client binding the picked address (and suspending one the
host does not have), the hysteresis of a return, the daily limit of returns, the answers of a zone."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config.model import DNSConfig, EgressAddress, EgressFailoverConfig
from appliance.delivery.client import Deliverer, HostsTarget
from appliance.dns.resolver import Resolver
from appliance.egress.dnsbl import CLEAR, LISTED, UNKNOWN, classify, query_name
from appliance.egress.pool import EgressPool
from appliance.egress.rejections import RejectionTable
from appliance.egress.store import EgressStore

from .conftest import EGRESS1, EGRESS2, MESSAGE

BLOCKED = "554 5.7.1 Service unavailable; Client host [127.0.44.1] blocked using zen.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _pool(tmp_path: Path, addresses: tuple[str, ...] = (EGRESS1, EGRESS2), clock: Clock | None = None,
          **failover: object) -> EgressPool:
    settings = EgressFailoverConfig(**{"rejection_threshold": 1, "clear_for": 60.0, **failover})  # type: ignore[arg-type]
    return EgressPool(tuple(EgressAddress(a, f"out{i}.test") for i, a in enumerate(addresses, 1)), settings,
                      EgressStore(tmp_path / "egress.sqlite"), DNSConfig(), clock=clock or Clock())


def _picked(pool: EgressPool) -> str | None:
    source = pool.pick(socket.AF_INET, "dest.test")
    return source.address if source is not None else None


async def test_an_address_the_host_lacks_is_suspended_and_the_next_one_sends(tmp_path, smtp_sink) -> None:
    sink = smtp_sink(address=EGRESS2)
    pool = _pool(tmp_path, ("192.0.2.1", EGRESS2))
    deliverer = Deliverer("gw.test", Resolver(["127.0.0.1"]), sources=pool)
    results = await deliverer.deliver(HostsTarget(((EGRESS2, sink.port),)), "s@home.test", ["r@dest.test"], MESSAGE)
    assert results["r@dest.test"].ok, results
    assert [(m.peer_address, m.helo) for m in sink.messages] == [(EGRESS2, "out2.test")]
    state = pool.state("192.0.2.1")
    assert state.suspended and state.why == "not local" and "cannot bind it" in state.evidence
    # Kept in the store: a new pool on the same file (a restart) knows it.
    assert _pool(tmp_path, ("192.0.2.1", EGRESS2)).store.state("192.0.2.1").suspended


async def test_with_every_address_suspended_the_delivery_is_held(tmp_path, smtp_sink) -> None:
    sink = smtp_sink(address=EGRESS2)
    pool = _pool(tmp_path, ("192.0.2.1",))
    deliverer = Deliverer("gw.test", Resolver(["127.0.0.1"]), sources=pool)
    result = (await deliverer.deliver(HostsTarget(((EGRESS2, sink.port),)), "s@home.test", ["r@dest.test"],
                                      MESSAGE))["r@dest.test"]
    assert (result.code, result.enhanced, result.text, result.held) == (451, "4.4.0", "no healthy sending address",
                                                                         True)
    assert sink.messages == []


async def test_a_suspension_ends_after_clear_for_at_most_max_changes_per_day(tmp_path) -> None:
    clock = Clock()
    pool = _pool(tmp_path, clock=clock, max_changes_per_day=2)
    for _ in range(2):
        assert pool.observe(EGRESS1, "dest.test", BLOCKED) is True
        assert _picked(pool) == EGRESS2
        await pool.check()  # the first clear round starts the streak
        clock.now += 59
        await pool.check()
        assert _picked(pool) == EGRESS2  # not clear for 60 s yet
        clock.now += 1
        await pool.check()
        assert _picked(pool) == EGRESS1
    # A third listing within 24 h: the address stays out however clear it looks.
    pool.observe(EGRESS1, "dest.test", BLOCKED)
    await pool.check()
    clock.now += 3600
    await pool.check()
    assert _picked(pool) == EGRESS2
    clock.now += 86400
    await pool.check()
    assert _picked(pool) == EGRESS1


def test_replies_that_are_not_about_our_address_count_nothing(tmp_path) -> None:
    pool = _pool(tmp_path)
    assert pool.observe(EGRESS1, "dest.test", "550 5.1.1 no such user") is False
    assert pool.observe(EGRESS1, "dest.test", "452 4.2.2 mailbox full") is False
    assert _picked(pool) == EGRESS1


def test_one_destination_counts_once(tmp_path) -> None:
    pool = _pool(tmp_path, rejection_threshold=2)
    for _ in range(5):
        pool.observe(EGRESS1, "dest1.test", BLOCKED)
    assert _picked(pool) == EGRESS1
    pool.observe(EGRESS1, "dest2.test", BLOCKED)
    assert _picked(pool) == EGRESS2


@pytest.mark.parametrize("reply", [
    BLOCKED,
    "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus",
    "550 5.7.1 Message rejected because 192.0.2.1 is listed at bl.example",
    "554 5.7.1 Your IP is blacklisted",
    "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. ... (S3150)",
    "550 5.7.606 Access denied, banned sending IP [192.0.2.1]",
    "550 5.7.608 Access denied",
    "421 4.7.0 [192.0.2.1] Our system has detected an unusual rate of mail; IP reputation",
    "421 4.7.0 This message is suspicious due to the very low reputation of the sending IP address",
    "550 5.7.1 poor reputation of the sending server",
])
def test_the_default_table_knows_the_blocking_replies(reply: str) -> None:
    assert RejectionTable(EgressFailoverConfig().rejection_texts).blocked(reply)


def test_query_names_reverse_octets_and_nibbles() -> None:
    assert query_name("127.0.44.1", "zen.test") == "1.44.0.127.zen.test"
    assert query_name("2001:db8::1", "zen.test.") == ".".join(reversed("20010db8" + "0" * 23 + "1")) + ".zen.test"


@given(st.integers(0, 2**32 - 1))
def test_only_127_outside_the_error_range_is_a_listing(value: int) -> None:
    code = ipaddress.IPv4Address(value)
    outcome = classify("zen.test", (str(code),)).outcome
    if code in ipaddress.ip_network("127.255.255.0/24") or code not in ipaddress.ip_network("127.0.0.0/8"):
        assert outcome == UNKNOWN
    else:
        assert outcome == LISTED


@given(st.lists(st.text(max_size=20), max_size=4))
def test_any_answer_is_a_verdict(texts: list[str]) -> None:
    assert classify("zen.test", tuple(texts)).outcome in (LISTED, CLEAR, UNKNOWN)
    assert classify("zen.test", ()).outcome == CLEAR
