"""Authentication, failure counting per client IP and bans (shared across instances via SQLite)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading

import pytest
from waits import wait_until_async

from appliance.auth.authenticator import Authenticator
from appliance.auth.bans import parse_network
from appliance.config.model import AuthConfig


class FakeClock:
    """A settable clock: ban windows are an hour long, tests cannot wait for them."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def directory(make_directory):
    d = make_directory(config_domains=["example.org"])
    d.add_user("alice@example.org", "right")
    return d


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_auth(directory, clock):
    made = []

    def make(**kwargs) -> Authenticator:
        kwargs.setdefault("ban_threshold", 3)
        auth = Authenticator(directory, AuthConfig(**kwargs), clock=clock)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        auth.close()


async def test_success_returns_canonical_address(make_auth):
    auth = make_auth()
    assert await auth.authenticate("ALICE@example.org", "right", "192.0.2.1") == "alice@example.org"
    assert await auth.authenticate("alice@example.org", "wrong", "192.0.2.1") is None
    assert await auth.authenticate("", "", "192.0.2.1") is None


async def test_ban_after_threshold_is_logged_and_blocks_even_the_right_password(make_auth, caplog, clock):
    auth = make_auth(ban_duration=3600, ban_window=600)
    with caplog.at_level(logging.INFO, logger="appliance.auth"):
        for _ in range(3):
            assert await auth.authenticate("alice@example.org", "wrong", "192.0.2.9") is None
    assert auth.is_banned("192.0.2.9")
    assert auth.is_banned("::ffff:192.0.2.9")
    assert not auth.is_banned("192.0.2.10")
    assert "banning 192.0.2.9 for 3600s after 3 authentication failures" in caplog.text
    assert "wrong" not in caplog.text
    assert await auth.authenticate("alice@example.org", "right", "192.0.2.9") is None
    assert await auth.authenticate("alice@example.org", "right", "192.0.2.10") == "alice@example.org"
    clock.now += 3601
    assert not auth.is_banned("192.0.2.9")
    assert await auth.authenticate("alice@example.org", "right", "192.0.2.9") == "alice@example.org"


async def test_failures_outside_the_window_do_not_count(make_auth, clock):
    auth = make_auth(ban_window=600)
    for _ in range(2):
        await auth.authenticate("alice@example.org", "wrong", "192.0.2.5")
    clock.now += 601
    await auth.authenticate("alice@example.org", "wrong", "192.0.2.5")
    assert not auth.is_banned("192.0.2.5")
    assert auth.bans.failures("192.0.2.5") == 1


async def test_loopback_is_counted_by_default_and_exempt_when_configured(make_auth):
    auth = make_auth()
    for _ in range(3):
        await auth.authenticate("alice@example.org", "wrong", "127.0.0.1")
    assert auth.is_banned("127.0.0.1")
    relaxed = make_auth(exempt_loopback=True)
    assert not relaxed.is_banned("127.0.0.1")
    for _ in range(5):
        await relaxed.authenticate("alice@example.org", "wrong", "::1")
    assert not relaxed.is_banned("::1")
    assert await relaxed.authenticate("alice@example.org", "right", "127.0.0.1") == "alice@example.org"


async def test_two_authenticators_on_one_database_count_together(make_auth):
    first, second = make_auth(), make_auth()
    await first.authenticate("alice@example.org", "wrong", "198.51.100.7")
    await second.authenticate("alice@example.org", "wrong", "198.51.100.7")
    await first.authenticate("alice@example.org", "wrong", "198.51.100.7")
    assert second.is_banned("198.51.100.7")


async def test_verification_does_not_block_the_event_loop(directory, clock, monkeypatch):
    """While argon2 runs, other coroutines keep running (it happens in a worker thread)."""
    started, release = threading.Event(), threading.Event()
    real_verify = directory.verify

    def slow_verify(username, password):
        started.set()
        release.wait(5)
        return real_verify(username, password)

    monkeypatch.setattr(directory, "verify", slow_verify)
    auth = Authenticator(directory, clock=clock)
    try:
        task = asyncio.create_task(auth.authenticate("alice@example.org", "right", "192.0.2.1"))
        await wait_until_async(started.is_set, 5, "the password check to start in its thread")
        assert not task.done()
        release.set()
        assert await task == "alice@example.org"
    finally:
        auth.close()


async def test_parallel_guesses_get_the_threshold_checked_and_no_more(make_auth, directory, monkeypatch):
    """Twenty logins at once from one address, the right password last: three passwords are checked (the
    threshold), the rest are refused unchecked, the address is banned, and the right password never got in."""
    checked: list[str] = []
    real_verify = directory.verify

    def counting_verify(username: str, password: str) -> tuple[str, str] | None:
        checked.append(password)
        return real_verify(username, password)

    monkeypatch.setattr(directory, "verify", counting_verify)
    auth = make_auth()
    passwords = [f"guess-{n}" for n in range(19)] + ["right"]
    results = await asyncio.gather(*(auth.authenticate("alice@example.org", p, "203.0.113.5") for p in passwords))
    assert results == [None] * 20
    assert len(checked) == 3 and "right" not in checked
    assert auth.is_banned("203.0.113.5")
    assert await auth.authenticate("alice@example.org", "right", "203.0.113.6") == "alice@example.org"


async def test_a_client_banned_while_its_check_waits_gets_no_check(directory, clock, monkeypatch):
    """A session already past the ban check, whose password waits its turn for the argon2 pool, is not checked
    once the ban is there."""
    started, release = threading.Event(), threading.Event()
    checked: list[str] = []
    real_verify = directory.verify

    def slow_verify(username: str, password: str) -> tuple[str, str] | None:
        checked.append(password)
        started.set()
        release.wait(5)
        return real_verify(username, password)

    monkeypatch.setattr(directory, "verify", slow_verify)
    auth = Authenticator(directory, AuthConfig(ban_threshold=5, password_workers=1), clock=clock)
    try:
        first = asyncio.create_task(auth.authenticate("alice@example.org", "guess", "203.0.113.9"))
        await wait_until_async(started.is_set, 5, "the first password check to start")
        second = asyncio.create_task(auth.authenticate("alice@example.org", "right", "203.0.113.9"))
        await wait_until_async(lambda: auth.bans.failures("203.0.113.9") == 0 and _pending(auth) == 2, 5,
                               "the second attempt to be reserved")
        auth.bans.add(parse_network("203.0.113.9"), None, "by hand")
        release.set()
        assert await first is None and await second is None
        assert checked == ["guess"]
    finally:
        auth.close()


def _pending(auth: Authenticator) -> int:
    """Attempts reserved and not yet settled, read from the store's file as another process would."""
    with sqlite3.connect(auth.bans.path) as conn:
        return conn.execute("SELECT COUNT(*) FROM auth_attempts WHERE pending = 1").fetchone()[0]
