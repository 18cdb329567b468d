"""Greylisting's pure part: the triplet's network and sender as postgrey keys them, and the decision from the
stored rows at a given time (no store, no clock: every path with plain numbers)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from appliance.config.model import GreylistConfig
from appliance.screening.greylist_triplet import (
    Change,
    NetworkRow,
    TripletRow,
    Write,
    client_network,
    decide,
    normalise_sender,
    retry_text,
    triplet_key,
)

CONFIG = GreylistConfig(enabled=True)  # postgrey's defaults: 300 s, 2 days, 35 days, 5 passes, 1 h
NET = "192.0.2.0/24"
KEY = triplet_key(NET, "list@example.com", "alice@example.org")
T0 = 1_000_000.0


def test_the_client_network_is_its_24_or_64() -> None:
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert client_network("fe80::1%eth0") == "fe80::/64"
    assert client_network("unknown") == "unknown"


@given(st.ip_addresses())
def test_every_address_of_a_network_gives_that_network_and_no_other_does(addr) -> None:
    network = ipaddress.ip_network(client_network(str(addr)))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    assert addr in network
    assert network.prefixlen == (24 if addr.version == 4 else 64)
    if int(network.network_address) > 0:  # the address just below the network is of another one
        assert client_network(str(network.network_address - 1)) != str(network)


def test_senders_that_change_per_message_keep_one_triplet() -> None:
    # BATV, both orders and the other vendors' forms
    assert normalise_sender("prvs=1234abcdef=bob@example.com") == "bob@example.com"
    assert normalise_sender("prvs=bob=1234abcdef@example.com") == "bob@example.com"
    assert normalise_sender("msprvs1=19247ybJL=bounces-bob@example.com") == "bounces-bob@example.com"
    assert normalise_sender("btv1==3a7d02c6b2c==bob@example.com") == "bob@example.com"
    # SRS: the original sender, whatever the forwarder's hash and timestamp of the day
    assert normalise_sender("SRS0=HHH=TT=orig.example=bob@forwarder.example") == "bob@orig.example"
    assert normalise_sender("SRS0=xyz=ab=orig.example=bob@forwarder.example") == "bob@orig.example"
    assert normalise_sender("SRS1=HHH=fwd1.example==HHH=TT=orig.example=bob@fwd2.example") == "bob@orig.example"
    # VERP and extensions, as postgrey: numbers that are words of their own become '#', +ext goes
    assert normalise_sender("bounce-12345-bob=example.org@lists.example") == "bounce-#-bob=example.org@lists.example"
    assert normalise_sender("bob+news-2026@example.com") == "bob@example.com"
    assert normalise_sender("Bob@Example.COM") == "bob@example.com"
    assert normalise_sender("") == normalise_sender("<>") == "<>"
    # a word that merely contains digits is the sender's own
    assert normalise_sender("user2024@example.com") == "user2024@example.com"
    assert normalise_sender("prvs=newsletter=1234abcdef@example.com") == "newsletter@example.com"


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_verp_numbers_make_one_triplet(first: int, second: int) -> None:
    def key(n: int) -> str:
        return triplet_key(NET, f"bounce-{n}@lists.example", "alice@example.org")

    assert key(first) == key(second)


@given(st.from_regex(r"[a-z][a-z.]{0,20}", fullmatch=True), st.from_regex(r"[0-9a-f]{6}", fullmatch=True),
       st.integers(min_value=0, max_value=9999))
def test_batv_tags_make_one_triplet(local: str, hashed: str, day: int) -> None:
    tagged = f"prvs={day:04d}{hashed}={local}@example.com"
    assert normalise_sender(tagged) == normalise_sender(f"{local}@example.com")


def test_the_key_names_network_sender_and_recipient_in_lower_case() -> None:
    assert triplet_key(NET, "Bob@Example.com", "Alice@Example.ORG") == "192.0.2.0/24/bob@example.com/alice@example.org"


def test_a_first_attempt_is_greylisted_for_the_delay_and_recorded() -> None:
    decision = decide(KEY, NET, None, None, T0, CONFIG)
    assert decision.greylisted and decision.wait == 300 and decision.reason == "new"
    assert decision.changes == (Change(Write.FIRST_SEEN, KEY),)


def test_a_retry_before_the_delay_is_greylisted_for_the_rest_and_writes_nothing() -> None:
    row = TripletRow(T0, T0, False)
    decision = decide(KEY, NET, row, None, T0 + 100, CONFIG)
    assert decision.greylisted and decision.wait == 200 and decision.changes == ()


def test_a_retry_after_the_delay_passes_and_counts_for_the_network() -> None:
    decision = decide(KEY, NET, TripletRow(T0, T0, False), None, T0 + 300, CONFIG)
    assert not decision.greylisted
    assert decision.changes == (Change(Write.PASSED, KEY), Change(Write.COUNT_PASS, NET))
    off = GreylistConfig(enabled=True, auto_allow=0)
    assert decide(KEY, NET, TripletRow(T0, T0, False), None, T0 + 300, off).changes == (Change(Write.PASSED, KEY),)


def test_a_first_retry_after_the_retry_window_starts_over() -> None:
    decision = decide(KEY, NET, TripletRow(T0, T0, False), None, T0 + 2 * 86400 + 1, CONFIG)
    assert decision.greylisted and decision.wait == 300 and decision.changes == (Change(Write.FIRST_SEEN, KEY),)


def test_a_first_seen_time_in_the_future_starts_over() -> None:
    decision = decide(KEY, NET, TripletRow(T0 + 3600, T0 + 3600, False), None, T0, CONFIG)
    assert decision.greylisted and decision.changes == (Change(Write.FIRST_SEEN, KEY),)


def test_a_passed_triplet_passes_for_its_lifetime_refreshed_once_a_day_then_starts_over() -> None:
    row = TripletRow(T0, T0 + 300, True)
    assert decide(KEY, NET, row, None, T0 + 3600, CONFIG).changes == ()
    later = decide(KEY, NET, row, None, T0 + 300 + 2 * 86400, CONFIG)
    assert not later.greylisted and later.changes == (Change(Write.REFRESH, KEY),)
    expired = decide(KEY, NET, row, None, T0 + 300 + 35 * 86400, CONFIG)
    assert expired.greylisted and expired.reason == "expired" and expired.changes == (Change(Write.FIRST_SEEN, KEY),)


def test_an_auto_allowed_network_passes_any_triplet_until_its_lifetime_is_over() -> None:
    allowed = NetworkRow(5, T0)
    decision = decide(KEY, NET, None, allowed, T0 + 60, CONFIG)
    assert not decision.greylisted and decision.reason == "network auto-allowed" and decision.changes == ()
    assert decide(KEY, NET, None, allowed, T0 + 2 * 86400, CONFIG).changes == (Change(Write.REFRESH_NETWORK, NET),)
    assert decide(KEY, NET, None, NetworkRow(4, T0), T0 + 60, CONFIG).greylisted
    assert decide(KEY, NET, None, NetworkRow(5, T0), T0 + 35 * 86400, CONFIG).greylisted
    assert decide(KEY, NET, None, NetworkRow(99, T0), T0, GreylistConfig(enabled=True, auto_allow=0)).greylisted


@given(st.floats(min_value=-1e7, max_value=1e8), st.booleans(), st.floats(min_value=0, max_value=1e8),
       st.one_of(st.none(), st.integers(min_value=0, max_value=10)))
def test_a_greylisted_attempt_always_says_when_to_retry_and_a_pass_never_restarts(
        age: float, passed: bool, seen_age: float, passes: int | None) -> None:
    row = TripletRow(T0 - age, T0 - min(age, seen_age) if passed else T0 - age, passed)
    net = None if passes is None else NetworkRow(passes, T0 - seen_age)
    decision = decide(KEY, NET, row, net, T0, CONFIG)
    if decision.greylisted:
        assert 0 < decision.wait <= CONFIG.delay
        assert all(change.write is Write.FIRST_SEEN for change in decision.changes)
    else:
        assert Change(Write.FIRST_SEEN, KEY) not in decision.changes


def test_the_retry_text_is_whole_seconds() -> None:
    assert retry_text(300) == "in 300 seconds"
    assert retry_text(0.2) == "in 1 second"
    assert retry_text(199.5) == "in 200 seconds"
