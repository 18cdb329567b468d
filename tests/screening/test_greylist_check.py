"""The greylisting checks with a real SQLite store and a clock the test turns: the triplet's life (first attempt,
early retry, pass, lifetime), the network auto-allow, the clients it skips (the verdicts set as the screening and
senderauth checks set them), the null sender at DATA, and a state that cannot be used (451 4.3.0, one log line)."""

from __future__ import annotations

import inspect
import ipaddress
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.config.model import GreylistConfig
from appliance.message.address import parse_mailbox
from appliance.pipeline import verdicts
from appliance.pipeline.stages import Action, RcptTo, Result
from appliance.screening.greylist import STATE_ERROR, Greylisting
from appliance.screening.greylist_store import PURGE_EVERY, GreylistStore

ALICE = "alice@example.org"
SENDER = "news@example.com"


@dataclass
class _Client:
    ip: str = "127.0.34.10"
    host_name: str | None = "client.test"
    login: str | None = None
    verdicts: dict[str, object] = field(default_factory=dict)


@dataclass
class _Transaction:
    mail_from: str | None = SENDER
    rcpt_tos: list[str] = field(default_factory=list)
    accepted: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    size: int = 0
    verdicts: dict[str, object] = field(default_factory=dict)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _check(path: Path, clock: Clock, **settings: object) -> Greylisting:
    config = GreylistConfig(enabled=True, **settings)  # type: ignore[arg-type]
    return Greylisting(config, GreylistStore(path / "greylist.sqlite", busy_timeout=0.2),
                       relays=lambda ip: ip.startswith("127.0.34.2"), clock=clock)


async def _rcpt(check: Greylisting, client: _Client | None = None, transaction: _Transaction | None = None,
                rcpt: str = ALICE) -> Result | None:
    outcome = check.rcpt(client or _Client(), transaction or _Transaction(),
                         RcptTo(rcpt, parse_mailbox(rcpt), (rcpt,)))
    return await outcome if inspect.isawaitable(outcome) else outcome


def _greylisted(result: Result | None) -> bool:
    return result is not None and result.action is Action.TEMPFAIL and result.reply is not None \
        and result.reply.startswith("451 4.7.1 ")


async def test_first_attempt_is_451_with_when_to_retry_then_the_retry_after_the_delay_passes(tmp_path, clock) -> None:
    check = _check(tmp_path, clock)
    first = await _rcpt(check)
    assert _greylisted(first) and first is not None and first.reply is not None
    assert "Greylisted" in first.reply and first.reply.endswith("try again in 300 seconds")
    assert first.reply.startswith(f"451 4.7.1 <{ALICE}>: ")
    clock.now += 120
    early = await _rcpt(check)
    assert _greylisted(early) and early is not None and early.reply is not None
    assert early.reply.endswith("try again in 180 seconds")
    clock.now += 180
    assert await _rcpt(check) is None
    # a known triplet: one read, nothing to write, so the check answers at once (no awaitable, no thread)
    clock.now += 3600
    outcome = check.rcpt(_Client(), _Transaction(), RcptTo(ALICE, parse_mailbox(ALICE), (ALICE,)))
    assert outcome is None
    assert check.store.count() == (1, 1)


async def test_the_triplet_is_the_clients_24_sender_and_recipient(tmp_path, clock) -> None:
    check = _check(tmp_path, clock)
    assert _greylisted(await _rcpt(check))
    clock.now += 300
    assert await _rcpt(check) is None
    assert await _rcpt(check, _Client(ip="127.0.34.99")) is None  # the same /24: the same triplet
    assert _greylisted(await _rcpt(check, _Client(ip="127.0.134.10")))  # another /24: a new one
    assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from="other@example.com")))
    assert _greylisted(await _rcpt(check, rcpt="bob@example.org"))
    # the sender's per-message parts do not make a new triplet
    assert await _rcpt(check, transaction=_Transaction(mail_from="prvs=1234abcdef=news@example.com")) is None
    assert await _rcpt(check, transaction=_Transaction(mail_from="news+2026-12@example.com")) is None


async def test_an_ipv6_client_is_known_by_its_64(tmp_path, clock) -> None:
    check = _check(tmp_path, clock)
    assert _greylisted(await _rcpt(check, _Client(ip="2001:db8:1:2::10")))
    clock.now += 300
    assert await _rcpt(check, _Client(ip="2001:db8:1:2:ffff::99")) is None
    assert _greylisted(await _rcpt(check, _Client(ip="2001:db8:1:3::10")))


async def test_a_network_is_auto_allowed_after_n_passes_one_per_interval(tmp_path, clock, caplog) -> None:
    check = _check(tmp_path, clock, auto_allow=2)
    caplog.set_level(logging.INFO, "appliance.screening")
    for sender in ("a@example.com", "b@example.com"):  # two passes in the same hour count once
        assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from=sender)))
    clock.now += 300
    for sender in ("a@example.com", "b@example.com"):
        assert await _rcpt(check, transaction=_Transaction(mail_from=sender)) is None
    assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from="new@example.com")))
    clock.now += 3600
    assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from="c@example.com")))
    clock.now += 300
    assert await _rcpt(check, transaction=_Transaction(mail_from="c@example.com")) is None  # the second pass
    assert "network 127.0.34.0/24 auto-allowed after 2 passed triplets" in caplog.text
    for ip, sender in (("127.0.34.10", "never-seen@example.net"), ("127.0.34.250", "another@example.net")):
        assert await _rcpt(check, _Client(ip=ip), _Transaction(mail_from=sender)) is None
    assert _greylisted(await _rcpt(check, _Client(ip="127.0.134.10"), _Transaction(mail_from="x@example.net")))
    clock.now += 36 * 86400  # not seen for the lifetime: greylisted again
    assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from="later@example.net")))


@pytest.mark.parametrize(("client", "transaction", "why"), [
    (_Client(verdicts={verdicts.DNSWL: ("list.dnswl.test",)}), _Transaction(), "DNSWL-listed"),
    (_Client(verdicts={verdicts.IPREV: "pass"}), _Transaction(verdicts={verdicts.SPF: "pass"}), "iprev+SPF pass"),
    (_Client(login=ALICE), _Transaction(), "authenticated"),
    (_Client(ip="127.0.34.20"), _Transaction(), "relay network"),
    (_Client(ip="198.51.100.7"), _Transaction(), "exempt network"),
])
async def test_clients_that_are_never_greylisted(tmp_path, clock, client, transaction, why) -> None:
    check = _check(tmp_path, clock, exempt=(ipaddress.ip_network("198.51.100.0/24"),))
    assert await _rcpt(check, client, transaction) is None, why
    assert check.store.count() == (0, 0), why


@pytest.mark.parametrize(("client", "transaction"), [
    (_Client(verdicts={verdicts.DNSWL: ()}), _Transaction()),  # screened, listed nowhere
    (_Client(verdicts={verdicts.IPREV: "pass"}), _Transaction()),  # no SPF verdict: not set is not a pass
    (_Client(verdicts={verdicts.IPREV: "pass"}), _Transaction(verdicts={verdicts.SPF: "softfail"})),
    (_Client(verdicts={verdicts.IPREV: "fail"}), _Transaction(verdicts={verdicts.SPF: "pass"})),
    (_Client(), _Transaction(verdicts={verdicts.SPF: "pass"})),
])
async def test_half_a_skip_is_no_skip(tmp_path, clock, client, transaction) -> None:
    assert _greylisted(await _rcpt(_check(tmp_path, clock), client, transaction))


async def test_exempt_recipients_by_address_or_domain(tmp_path, clock) -> None:
    check = _check(tmp_path, clock, exempt_recipients=frozenset({"postmaster@example.org", "open.example"}))
    assert await _rcpt(check, rcpt="Postmaster@example.org") is None
    assert await _rcpt(check, rcpt="anyone@open.example") is None
    assert _greylisted(await _rcpt(check))


async def test_the_null_sender_is_greylisted_after_data_not_at_rcpt(tmp_path, clock) -> None:
    check = _check(tmp_path, clock)
    bounce = _Transaction(mail_from="<>", accepted=[(ALICE, (ALICE,)), ("bob@example.org", ("bob@example.org",))])
    assert await _rcpt(check, transaction=bounce) is None  # an address verification probe learns the truth
    outcome = check.data(_Client(), bounce, b"")
    result = await outcome if inspect.isawaitable(outcome) else outcome
    assert _greylisted(result) and result is not None and result.reply is not None
    assert result.reply.startswith("451 4.7.1 Greylisted")
    clock.now += 300
    outcome = check.data(_Client(), bounce, b"")
    assert (await outcome if inspect.isawaitable(outcome) else outcome) is None
    assert check.data(_Client(), _Transaction(), b"") is None  # a sender's mail was judged at RCPT
    assert check.store.count() == (2, 1)


async def test_the_state_survives_a_new_store_on_the_same_file(tmp_path, clock) -> None:
    assert _greylisted(await _rcpt(_check(tmp_path, clock)))
    clock.now += 300
    assert await _rcpt(_check(tmp_path, clock)) is None  # the first attempt was remembered
    clock.now += 10
    restarted = _check(tmp_path, clock)
    assert restarted.rcpt(_Client(), _Transaction(), RcptTo(ALICE, parse_mailbox(ALICE), (ALICE,))) is None


async def test_two_stores_racing_count_a_pass_once_per_interval(tmp_path, clock) -> None:
    one, two = _check(tmp_path, clock, auto_allow=2), _check(tmp_path, clock, auto_allow=2)
    for check, sender in ((one, "a@example.com"), (two, "b@example.com")):
        assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from=sender)))
    clock.now += 300
    for check, sender in ((one, "a@example.com"), (two, "b@example.com")):
        assert await _rcpt(check, transaction=_Transaction(mail_from=sender)) is None
    assert _greylisted(await _rcpt(one, transaction=_Transaction(mail_from="c@example.com")))  # counted once


async def test_old_rows_expire(tmp_path, clock) -> None:
    check = _check(tmp_path, clock)
    assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from="gone@example.com")))
    assert _greylisted(await _rcpt(check))
    clock.now += 300
    assert await _rcpt(check) is None
    assert check.store.count() == (2, 1)
    clock.now += 2 * 86400 + PURGE_EVERY  # the unpassed triplet is past its retry window
    assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from="new@example.com")))
    assert check.store.count() == (2, 1)  # gone@ went, new@ came; the passed one stays
    clock.now += 36 * 86400
    assert _greylisted(await _rcpt(check, transaction=_Transaction(mail_from="newer@example.com")))
    assert check.store.count() == (1, 0)


async def test_a_corrupt_state_file_is_451_4_3_0_in_one_log_line_and_used_again_once_replaced(
        tmp_path, clock, caplog) -> None:
    state = tmp_path / "greylist.sqlite"
    state.write_bytes(b"this is not an SQLite database\n" * 200)
    check = _check(tmp_path, clock)
    caplog.set_level(logging.WARNING, "appliance.screening")
    result = await _rcpt(check)
    assert result is not None and result.action is Action.TEMPFAIL and result.reply == STATE_ERROR
    assert result.reply.startswith("451 4.3.0 ")
    [record] = [r for r in caplog.records if r.name == "appliance.screening"]
    assert "greylist.sqlite" in record.getMessage() and "not a database" in record.getMessage()
    assert record.exc_info is None and "\n" not in record.getMessage()
    state.unlink()
    assert _greylisted(await _rcpt(check))


async def test_a_locked_state_is_451_4_3_0_never_a_silent_pass(tmp_path, clock) -> None:
    check = _check(tmp_path, clock)
    assert _greylisted(await _rcpt(check))
    clock.now += 300
    holder = sqlite3.connect(tmp_path / "greylist.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock longer than the busy timeout
    try:
        result = await _rcpt(check)  # the pass must be written: it cannot be, so it is not a pass
        assert result is not None and result.reply == STATE_ERROR
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await _rcpt(check) is None


async def test_an_unwritable_data_dir_is_451_4_3_0(tmp_path, clock) -> None:
    check = Greylisting(GreylistConfig(enabled=True), GreylistStore(tmp_path / "missing" / "greylist.sqlite"),
                        clock=clock)
    result = await _rcpt(check)
    assert result is not None and result.reply == STATE_ERROR
