"""The login cache (auth/cache.py) by itself, and behind the Authenticator: what is served from it, what never
is, and when an entry goes (TTL, LRU bound, a changed hash, a ban, a reload). Clocks are injected: no sleeps."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import argon2
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from appliance.auth.authenticator import Authenticator
from appliance.auth.bans import parse_network
from appliance.auth.cache import LoginCache
from appliance.config import ConfigError, parse_config
from appliance.config.model import AuthConfig, LoginCacheConfig

ALICE = "alice@example.org"
IP = "192.0.2.1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hashes(table: dict[str, str | None]):
    return lambda user: table.get(user)


# ---------------------------------------------------------------------------------------------- the cache alone


def test_a_stored_login_is_a_hit_for_that_user_and_password_only() -> None:
    cache = LoginCache(clock=Clock())
    cache.store(ALICE, "right", "H1", IP)
    current = hashes({ALICE: "H1", "bob@example.org": "H2"})
    assert cache.lookup(ALICE, "right", current)
    assert not cache.lookup(ALICE, "wrong", current)
    assert not cache.lookup(ALICE, "right ", current)
    assert not cache.lookup("bob@example.org", "right", current)
    assert (cache.stats.hits, cache.stats.misses) == (1, 3)


def test_an_entry_expires_after_the_ttl_counted_from_the_check() -> None:
    clock = Clock()
    cache = LoginCache(ttl=300, clock=clock)
    cache.store(ALICE, "right", "H1", IP)
    current = hashes({ALICE: "H1"})
    clock.now += 299
    assert cache.lookup(ALICE, "right", current)  # a hit does not extend the entry's life
    clock.now += 1
    assert not cache.lookup(ALICE, "right", current)
    assert len(cache) == 0


def test_a_changed_hash_makes_the_entry_stale_at_once() -> None:
    cache = LoginCache(clock=Clock())
    cache.store(ALICE, "old", "H1", IP)
    assert not cache.lookup(ALICE, "old", hashes({ALICE: "H2"}))
    assert cache.stats.stale == 1 and len(cache) == 0
    assert not cache.lookup(ALICE, "old", hashes({ALICE: "H1"}))  # gone, not just skipped
    cache.store(ALICE, "gone", "H3", IP)
    assert not cache.lookup(ALICE, "gone", hashes({}))  # the user was deleted


def test_the_least_recently_used_entry_goes_past_max_entries() -> None:
    cache = LoginCache(max_entries=2, clock=Clock())
    current = hashes({"a@x.org": "A", "b@x.org": "B", "c@x.org": "C"})
    cache.store("a@x.org", "pa", "A", IP)
    cache.store("b@x.org", "pb", "B", IP)
    assert cache.lookup("a@x.org", "pa", current)  # a is now the most recently used
    cache.store("c@x.org", "pc", "C", IP)
    assert len(cache) == 2
    assert not cache.lookup("b@x.org", "pb", current)
    assert cache.lookup("a@x.org", "pa", current) and cache.lookup("c@x.org", "pc", current)


def test_forget_ip_drops_the_entries_that_address_used_and_forget_user_a_users() -> None:
    cache = LoginCache(clock=Clock())
    current = hashes({ALICE: "A", "bob@example.org": "B"})
    cache.store(ALICE, "pa", "A", "192.0.2.1")
    cache.store("bob@example.org", "pb", "B", "192.0.2.2")
    cache.note_ip("bob@example.org", "pb", "192.0.2.3")
    assert cache.forget_ip("192.0.2.3") == 1
    assert not cache.lookup("bob@example.org", "pb", current)
    assert cache.lookup(ALICE, "pa", current)
    assert cache.forget_user(ALICE) == 1
    assert not cache.lookup(ALICE, "pa", current)


def test_a_ttl_of_zero_or_a_reconfigure_to_it_keeps_nothing() -> None:
    off = LoginCache(ttl=0, clock=Clock())
    off.store(ALICE, "right", "H1", IP)
    assert not off.lookup(ALICE, "right", hashes({ALICE: "H1"})) and len(off) == 0
    on = LoginCache(clock=Clock())
    on.store(ALICE, "right", "H1", IP)
    on.configure(0, 10)
    assert len(on) == 0


@given(st.lists(st.tuples(st.sampled_from(["a@x.org", "b@x.org"]), st.text(max_size=8),
                          st.booleans()), max_size=30))
def test_a_hit_is_only_ever_a_password_that_was_stored(operations) -> None:
    """Against a plain model: whatever the sequence of stores and lookups, a lookup hits exactly when that user
    stored that very password before (nothing expires or is evicted in this run)."""
    cache = LoginCache(clock=Clock())
    stored: set[tuple[str, str]] = set()
    current = hashes({"a@x.org": "A", "b@x.org": "B"})
    for user, password, store in operations:
        if store:
            cache.store(user, password, current(user) or "", IP)
            stored.add((user, password))
        else:
            assert cache.lookup(user, password, current) == ((user, password) in stored)


# ---------------------------------------------------------------------------------------------- config


def _auth_section(auth: dict) -> AuthConfig:
    return parse_config(yaml.safe_dump({"hostname": "mx.example.org", "roles": ["primary"],
                                        "primary": {"domains": ["example.org"]}, "auth": auth}),
                        check_host=False).auth


def test_config_keys_parse_and_bad_values_name_the_key() -> None:
    assert _auth_section({}).login_cache == LoginCacheConfig(enabled=True, ttl=300.0, max_entries=10_000)
    got = _auth_section({"password_workers": 4, "login_cache": {"enabled": False, "ttl": "0s", "max_entries": 5}})
    assert got.password_workers == 4 and got.login_cache == LoginCacheConfig(False, 0.0, 5)
    assert _auth_section({"login_cache": {"ttl": 60}}).login_cache.ttl == 60.0
    for auth, where in (({"password_workers": 0}, "auth.password_workers"),
                        ({"login_cache": {"ttl": "soon"}}, "auth.login_cache.ttl"),
                        ({"login_cache": {"max_entries": 0}}, "auth.login_cache.max_entries"),
                        ({"login_cache": {"enabled": "yes"}}, "auth.login_cache.enabled"),
                        ({"login_cache": {"size": 3}}, "auth.login_cache.size")):
        with pytest.raises(ConfigError) as caught:
            _auth_section(auth)
        assert caught.value.where == where, str(caught.value)


# ---------------------------------------------------------------------------------- behind the Authenticator


@pytest.fixture
def directory(make_directory):
    d = make_directory(config_domains=["example.org"])
    d.add_user(ALICE, "right")
    return d


@pytest.fixture
def checks(directory, monkeypatch) -> list[str]:
    """The passwords that reached argon2."""
    checked: list[str] = []
    real = directory.verify

    def counting(username: str, password: str) -> tuple[str, str] | None:
        checked.append(password)
        return real(username, password)

    monkeypatch.setattr(directory, "verify", counting)
    return checked


@pytest.fixture
def make_auth(directory):
    made = []

    def make(cache_clock=None, **kwargs) -> Authenticator:
        kwargs.setdefault("ban_threshold", 3)
        extra = {"cache_clock": cache_clock} if cache_clock is not None else {}
        auth = Authenticator(directory, AuthConfig(**kwargs), **extra)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        auth.close()


def _pending(auth: Authenticator) -> int:
    with sqlite3.connect(auth.bans.path) as conn:
        return conn.execute("SELECT COUNT(*) FROM auth_attempts").fetchone()[0]


async def test_the_second_login_is_served_from_the_cache_and_settles_its_attempt(make_auth, checks, caplog) -> None:
    auth = make_auth()
    with caplog.at_level(logging.INFO, logger="appliance.auth"):
        assert await auth.authenticate("Alice@Example.org", "right", IP) == ALICE
        assert await auth.authenticate(ALICE, "right", IP) == ALICE
    assert checks == ["right"]
    assert f"user {ALICE} authenticated from {IP} (login cache: 1 hits" in caplog.text
    assert "right" not in caplog.text.replace("authenticated", "")
    assert _pending(auth) == 0  # the hit's reserved attempt was settled as a success


async def test_a_wrong_password_is_always_checked_and_counted(make_auth, checks) -> None:
    auth = make_auth()
    assert await auth.authenticate(ALICE, "right", IP) == ALICE
    for _ in range(3):
        assert await auth.authenticate(ALICE, "wrong", IP) is None
    assert checks == ["right", "wrong", "wrong", "wrong"]
    assert auth.is_banned(IP)
    assert await auth.authenticate(ALICE, "right", IP) is None  # banned: the cache is not even asked


async def test_a_password_changed_by_another_process_fails_at_once(make_auth, make_directory, checks) -> None:
    auth = make_auth()
    assert await auth.authenticate(ALICE, "right", IP) == ALICE
    cli = make_directory(config_domains=["example.org"])  # what `mailfleet user passwd` opens
    cli.set_password(ALICE, "new")
    assert await auth.authenticate(ALICE, "right", IP) is None
    assert await auth.authenticate(ALICE, "new", IP) == ALICE
    assert checks == ["right", "right", "new"]


async def test_a_ban_by_hand_keeps_the_cached_client_out_and_drops_its_entries(make_auth, checks, caplog) -> None:
    auth = make_auth()
    assert await auth.authenticate(ALICE, "right", "203.0.113.7") == ALICE
    assert await auth.authenticate(ALICE, "right", "203.0.113.8") == ALICE  # a hit, used from .8 too
    auth.bans.add(parse_network("203.0.113.0/24"), None, "by hand")
    with caplog.at_level(logging.INFO, logger="appliance.auth"):
        assert await auth.authenticate(ALICE, "right", "203.0.113.7") is None
    assert "login cache: 1 login(s) used from 203.0.113.7 dropped" in caplog.text
    assert len(auth.cache) == 0
    assert await auth.authenticate(ALICE, "right", "198.51.100.1") == ALICE
    assert checks == ["right", "right"]  # the entry was gone: checked again


async def test_the_ttl_ends_a_cached_login(make_auth, checks) -> None:
    clock = Clock()
    auth = make_auth(cache_clock=clock, login_cache=LoginCacheConfig(ttl=60))
    assert await auth.authenticate(ALICE, "right", IP) == ALICE
    clock.now += 59
    assert await auth.authenticate(ALICE, "right", IP) == ALICE
    clock.now += 1
    assert await auth.authenticate(ALICE, "right", IP) == ALICE
    assert checks == ["right", "right"]


async def test_a_disabled_cache_checks_every_password(make_auth, checks) -> None:
    auth = make_auth(login_cache=LoginCacheConfig(enabled=False))
    for _ in range(2):
        assert await auth.authenticate(ALICE, "right", IP) == ALICE
    assert checks == ["right", "right"]
    auth.reconfigure(AuthConfig(ban_threshold=3))  # SIGHUP turns it on
    for _ in range(2):
        assert await auth.authenticate(ALICE, "right", IP) == ALICE
    assert checks == ["right", "right", "right"]


async def test_a_reload_that_changes_a_config_users_hash_drops_its_entries(make_directory, tmp_path) -> None:
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    bob = "bob@example.org"

    def config_directory(password: str):
        return make_directory(config_domains=["example.org"], config_users=[
            {"address": bob, "password_hash": hasher.hash(password)}])

    auth = Authenticator(config_directory("first"), AuthConfig())
    try:
        assert await auth.authenticate(bob, "first", IP) == bob
        auth.set_directory(config_directory("second"))
        assert len(auth.cache) == 0
        assert await auth.authenticate(bob, "first", IP) is None
        assert await auth.authenticate(bob, "second", IP) == bob
    finally:
        auth.close()


async def test_the_rehash_on_login_is_what_the_cache_keeps(make_directory, tmp_path) -> None:
    """A hash made with old argon2 parameters is upgraded at the first login; the next login is still a hit
    (the cache holds the upgraded hash), and the old hash's entry proves nothing once it is replaced."""
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=512, parallelism=1)
    directory = make_directory(config_domains=["example.org"], password_hasher=weak)
    directory.add_user(ALICE, "right")
    upgraded = make_directory(config_domains=["example.org"])  # the fixture's (different) cost parameters
    auth = Authenticator(upgraded, AuthConfig())
    try:
        before = upgraded.password_hash(ALICE)
        assert await auth.authenticate(ALICE, "right", IP) == ALICE
        assert upgraded.password_hash(ALICE) != before
        assert await auth.authenticate(ALICE, "right", IP) == ALICE
        assert auth.cache.stats.hits == 1 and auth.cache.stats.stale == 0
    finally:
        auth.close()


async def test_concurrent_first_logins_through_one_thread_all_succeed_then_hit(make_auth, checks) -> None:
    auth = make_auth(password_workers=1, ban_threshold=50)
    results = await asyncio.gather(*(auth.authenticate(ALICE, "right", f"192.0.2.{n}") for n in range(10)))
    assert results == [ALICE] * 10
    checked = len(checks)
    assert 1 <= checked <= 10
    assert await auth.authenticate(ALICE, "right", "192.0.2.99") == ALICE
    assert len(checks) == checked
