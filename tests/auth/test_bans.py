"""The ban store with a settable clock: reserved login attempts, escalation, networks, the exempt list, unknown
recipients, and that two stores on one file (two processes) and a reopened one (a restart) see the same bans."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.auth.bans import DICTIONARY_ATTACK, LOGIN_FAILURES, BanError, BanStore, parse_network, span
from appliance.config.model import AuthConfig, BansConfig, DictionaryConfig

HOUR = 3600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(tmp_path, clock):
    made: list[BanStore] = []

    def make(auth: AuthConfig | None = None, bans: BansConfig | None = None) -> BanStore:
        store = BanStore(tmp_path / "bans.sqlite", auth or AuthConfig(ban_threshold=3, ban_window=600,
                                                                      ban_duration=HOUR), bans, clock)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def fail_logins(store: BanStore, ip: str, count: int) -> list:
    bans = []
    for n in range(count):
        attempt = store.reserve_attempt(ip, f"user{n}@example.org")
        assert attempt is not None, f"attempt {n + 1} refused"
        bans.append(store.settle_attempt(attempt, ip, False))
    return bans


def test_attempts_in_flight_count_before_their_password_is_checked(make_store) -> None:
    store = make_store()
    held = [store.reserve_attempt("192.0.2.1", "alice") for _ in range(3)]
    assert None not in held
    assert store.reserve_attempt("192.0.2.1", "alice") is None  # three in flight: the fourth is not checked
    assert store.reserve_attempt("192.0.2.2", "alice") is not None  # another address has its own count
    assert store.settle_attempt(held[0], "192.0.2.1", True) is None  # a success frees its place
    again = store.reserve_attempt("192.0.2.1", "alice")
    assert again is not None
    assert store.settle_attempt(held[1], "192.0.2.1", False) is None
    assert store.settle_attempt(held[2], "192.0.2.1", False) is None
    assert store.failures("192.0.2.1") == 2 and not store.is_banned("192.0.2.1")
    ban = store.settle_attempt(again, "192.0.2.1", False)
    assert ban is not None and ban.reason == LOGIN_FAILURES and ban.until == ban.since + HOUR
    assert "3 failed logins within 10m" in ban.evidence and "'alice'" in ban.evidence
    assert store.is_banned("192.0.2.1") and store.is_banned("::ffff:192.0.2.1")
    assert store.reserve_attempt("192.0.2.1", "alice") is None  # banned: nothing more is checked
    assert store.failures("192.0.2.1") == 0  # the count starts afresh with the ban


def test_attempts_outside_the_window_are_forgotten(make_store, clock) -> None:
    store = make_store()
    fail_logins(store, "192.0.2.5", 2)
    clock.now += 601
    assert fail_logins(store, "192.0.2.5", 2) == [None, None]
    assert store.failures("192.0.2.5") == 2 and not store.is_banned("192.0.2.5")


def test_a_repeat_offender_is_banned_longer_up_to_the_maximum(make_store, clock) -> None:
    store = make_store(bans=BansConfig(escalation=4, max_duration=20 * HOUR, memory=7 * 86400))
    lengths = []
    for _ in range(4):
        ban = fail_logins(store, "198.51.100.9", 3)[-1]
        assert ban is not None
        lengths.append((ban.until - ban.since, ban.offence))
        assert store.banned("198.51.100.9") == ban
        clock.now = ban.until + 60  # the ban is over; the address is still remembered
        assert not store.is_banned("198.51.100.9")
    assert lengths == [(HOUR, 1), (4 * HOUR, 2), (16 * HOUR, 3), (20 * HOUR, 4)]
    clock.now += 7 * 86400 + 1  # memory is over: the next ban is a first one again
    assert fail_logins(store, "198.51.100.9", 3)[-1].offence == 1


def test_a_network_ban_covers_every_address_inside_it(make_store) -> None:
    store = make_store()
    store.add(parse_network("203.0.113.0/24"), None, "spam run")
    store.add(parse_network("2001:db8::/48"), 2 * HOUR, "probe")
    assert store.is_banned("203.0.113.0") and store.is_banned("203.0.113.255")
    assert not store.is_banned("203.0.112.255") and not store.is_banned("203.0.114.0")
    assert store.is_banned("2001:db8:0:ffff::1") and not store.is_banned("2001:db8:1::1")
    assert store.banned("203.0.113.7").reason == "spam run"
    assert [ban.address for ban in store.in_force()] == ["203.0.113.0/24", "2001:db8::/48"]
    assert store.remove(parse_network("203.0.113.7")) is None  # not a ban of its own ...
    assert [ban.address for ban in store.covering(parse_network("203.0.113.7"))] == ["203.0.113.0/24"]
    assert store.remove(parse_network("203.0.113.0/24")).reason == "spam run"  # ... this one is
    assert not store.is_banned("203.0.113.7")


def test_the_exempt_list_and_loopback_are_never_banned(make_store) -> None:
    exempt = BansConfig(exempt=(ipaddress.ip_network("192.0.2.0/28"),))
    store = make_store(AuthConfig(ban_threshold=3, exempt_loopback=True), exempt)
    store.add(parse_network("192.0.2.0/24"), None, "whole network")
    assert store.is_banned("192.0.2.16") and not store.is_banned("192.0.2.15")
    assert store.exempt("127.0.0.1") and store.exempt("::1") and not store.exempt("192.0.2.16")
    for text in ("192.0.2.8", "192.0.2.0/30", "127.0.0.2"):
        with pytest.raises(BanError, match="exempt"):
            store.add(parse_network(text), None, "no")


def test_bans_survive_a_restart_and_are_shared_between_processes(make_store, clock) -> None:
    first, second = make_store(), make_store()
    fail_logins(first, "198.51.100.7", 1)
    fail_logins(second, "198.51.100.7", 1)
    assert fail_logins(first, "198.51.100.7", 1)[-1] is not None  # the two counted together
    assert second.is_banned("198.51.100.7")
    reopened = make_store()
    assert reopened.banned("198.51.100.7").reason == LOGIN_FAILURES
    clock.now += HOUR + 1
    assert not reopened.is_banned("198.51.100.7")


def test_a_store_that_saw_no_bans_sees_the_ones_another_process_adds(make_store) -> None:
    """The lookups skip their queries while the file is unchanged; a write by anyone else is seen at once."""
    reader, writer = make_store(), make_store()
    assert reader.banned("203.0.113.9") is None and reader.unknown_recipients("203.0.113.9") == 0
    writer.add(parse_network("203.0.113.0/24"), None, "spam run")
    writer.record_unknown_recipient("203.0.113.9", "nobody@example.org")
    assert reader.banned("203.0.113.9").reason == "spam run"
    assert reader.unknown_recipients("203.0.113.9") == 1
    writer.remove(parse_network("203.0.113.0/24"))
    assert reader.banned("203.0.113.9") is None


def test_unknown_recipients_lead_to_a_dictionary_ban_with_its_evidence(make_store, clock) -> None:
    store = make_store(bans=BansConfig(dictionary=DictionaryConfig(ban_after=4, window=60, ban_duration=HOUR)))
    assert store.record_unknown_recipient("192.0.2.44", "a@example.org") == (1, None)
    clock.now += 61  # outside the window: forgotten
    counts = [store.record_unknown_recipient("192.0.2.44", f"user{n}@example.org")[0] for n in range(3)]
    assert counts == [1, 2, 3] and store.unknown_recipients("192.0.2.44") == 3
    count, ban = store.record_unknown_recipient("192.0.2.44", "bad\r\nname@example.org")
    assert count == 4 and ban is not None and ban.reason == DICTIONARY_ATTACK
    assert ban.evidence.startswith("4 unknown recipients within 1m (last <bad\\r\\nname@example.org>")
    assert store.banned("192.0.2.44") == ban


def test_lifting_a_ban_forgets_the_history(make_store, clock) -> None:
    store = make_store()
    fail_logins(store, "192.0.2.60", 3)
    assert store.remove(parse_network("192.0.2.60")) is not None
    assert not store.is_banned("192.0.2.60")
    assert fail_logins(store, "192.0.2.60", 3)[-1].offence == 1


def test_a_ban_by_hand_stops_the_logins_and_unknown_recipients_it_covers(make_store) -> None:
    store = make_store(bans=BansConfig(dictionary=DictionaryConfig(ban_after=1)))
    store.add(parse_network("192.0.2.64/26"), None, "by hand, for good")
    assert store.reserve_attempt("192.0.2.70", "x") is None
    assert store.record_unknown_recipient("192.0.2.70", "a@example.org") == (1, None)  # no second ban over it
    assert [(ban.address, ban.until) for ban in store.in_force()] == [("192.0.2.64/26", None)]


@pytest.mark.parametrize(("text", "message"), [
    ("192.0.2.1/24", "has host bits set (did you mean 192.0.2.0/24?)"),
    ("mail.example.org", "is not an IP address or network"),
    ("192.0.2.300", "is not an IP address or network"),
    ("", "is not an IP address or network"),
])
def test_bad_addresses_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(BanError) as info:
        parse_network(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_addresses_and_spans_read_as_an_administrator_writes_them() -> None:
    assert str(parse_network("::ffff:192.0.2.9")) == "192.0.2.9/32"
    assert str(parse_network(" 2001:db8::/32 ")) == "2001:db8::/32"
    assert [span(s) for s in (45, 600, 14400, 86400 * 7, 90.5)] == ["45s", "10m", "4h", "7d", "90.5s"]


def test_overlapping_bans_the_longest_one_answers(make_store) -> None:
    store = make_store()
    store.add(parse_network("10.0.0.0/24"), HOUR, "small")
    store.add(parse_network("10.0.0.0/8"), None, "large")  # starts at the same address
    store.add(parse_network("10.0.0.5"), 2 * HOUR, "single")
    assert store.banned("10.0.0.5").reason == "large"
    assert store.banned("10.200.1.1").reason == "large"
    assert store.remove(parse_network("10.0.0.0/8")) is not None
    assert store.banned("10.0.0.5").reason == "single" and store.banned("10.0.0.6").reason == "small"
    assert store.banned("10.0.1.0") is None



@settings(max_examples=200)
@given(st.data())
def test_a_ban_covers_exactly_the_addresses_of_its_network(tmp_path_factory, data) -> None:
    address, net = data.draw(st.sampled_from(((ipaddress.IPv4Address, ipaddress.IPv4Network),
                                              (ipaddress.IPv6Address, ipaddress.IPv6Network))))
    bits = 32 if address is ipaddress.IPv4Address else 128
    prefix = data.draw(st.integers(0, bits))
    start = data.draw(st.integers(0, 2**bits - 1)) >> (bits - prefix) << (bits - prefix)
    network = net((start, prefix))
    inside = address(start + data.draw(st.integers(0, network.num_addresses - 1)))
    other = address(data.draw(st.integers(0, 2**bits - 1)))
    store = BanStore(tmp_path_factory.mktemp("bans") / "bans.sqlite")
    try:
        store.add(network, None, "property")
        for probe in (inside, other):
            if isinstance(probe, ipaddress.IPv6Address) and probe.ipv4_mapped is not None:
                continue  # ::ffff:a.b.c.d is looked up as a.b.c.d (tested above)
            assert store.is_banned(str(probe)) == (probe in network), (network, probe)
    finally:
        store.close()
