"""The dictionary-attack guard around the real recipient check: which refusals count, the tarpit's growing and
bounded delays (read from the sleeps it asks for, never timed), the ban, and who is never slowed.

The ban store is real (SQLite in tmp_path) with a settable clock; the sleep is a recorder, so the delays the
guard asks for are checked exactly and no test waits for them.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

import pytest
import yaml

from appliance.abuse.dictionary import DictionaryGuard, is_unknown_recipient
from appliance.auth.bans import DICTIONARY_ATTACK, BanStore
from appliance.config import parse_config
from appliance.config.model import AuthConfig, BansConfig, DictionaryConfig
from appliance.message.address import parse_mailbox
from appliance.pipeline.recipients import RecipientCheck, RecipientPolicy
from appliance.pipeline.stages import RcptTo, Result, refuse, tempfail


@dataclass
class Client:
    ip: str = "127.0.32.40"
    host_name: str | None = "client.test"
    login: str | None = None
    verdicts: dict[str, object] = field(default_factory=dict)


@dataclass
class Transaction:
    mail_from: str | None = "sender@outside.test"
    size: int = 0


class Users:
    """The directory's two questions, answered for one domain with one user."""

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.org"

    def resolve(self, address: str) -> list[str] | None:
        return ["alice@example.org"] if address.lower() == "alice@example.org" else None


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recipients() -> RecipientCheck:
    config = parse_config(yaml.safe_dump({"hostname": "mx.example.org", "roles": ["primary"],
                                          "primary": {"domains": ["example.org"]}}), check_host=False)
    return RecipientCheck(RecipientPolicy(config, Users()))


@pytest.fixture
def store(tmp_path):
    store = BanStore(tmp_path / "bans.sqlite", AuthConfig(), BansConfig(), Clock())
    yield store
    store.close()


def guard(inner, store: BanStore, slept: list[float], exempt: tuple = (), **settings) -> DictionaryGuard:
    config = DictionaryConfig(**{"session_threshold": 2, "ip_threshold": 100, "ban_after": 6,
                                 "tarpit_delay": 1.0, "tarpit_max": 4.0, **settings})
    store.reconfigure(AuthConfig(), BansConfig(exempt=exempt, dictionary=config))

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return DictionaryGuard(inner, store, config, sleep)


async def rcpt(check: DictionaryGuard, client: Client, address: str) -> Result | None:
    answer = check(client, Transaction(), RcptTo(address, parse_mailbox(address), (address,)))
    return answer if answer is None or isinstance(answer, Result) else await answer


async def test_unknown_recipients_slow_the_session_down_then_ban_it(recipients, store) -> None:
    slept: list[float] = []
    check, client = guard(recipients, store, slept), Client()
    replies = []
    for local in ("u1", "u2", "alice", "u3", "u4", "u5", "alice", "u6", "alice"):
        result = await rcpt(check, client, f"{local}@example.org")
        replies.append(result.reply[:9] if result is not None else "250")
    assert replies == ["550 5.1.1", "550 5.1.1", "250", "550 5.1.1", "550 5.1.1", "550 5.1.1", "250",
                       "421 4.7.0", "421 4.7.0"]
    # two unknown recipients, then every reply waits: 1s, doubled with each unknown one, at most 4s; the ban
    # reply and the ones after it are not delayed
    assert slept == [1.0, 1.0, 2.0, 4.0, 4.0]
    ban = store.banned(client.ip)
    assert ban is not None and ban.reason == DICTIONARY_ATTACK
    assert ban.evidence.startswith("6 unknown recipients within 10m (last <u6@example.org>")


async def test_the_count_of_an_address_spans_its_sessions(recipients, store) -> None:
    slept: list[float] = []
    check = guard(recipients, store, slept, ip_threshold=2, session_threshold=50)
    for n in range(2):
        assert (await rcpt(check, Client(), f"nobody{n}@example.org")).reply.startswith("550 5.1.1")
    assert slept == []
    assert await rcpt(check, Client(), "alice@example.org") is None  # a new session starts in the tarpit
    assert slept == [1.0]
    assert await rcpt(check, Client(ip="127.0.32.41"), "alice@example.org") is None  # another address does not
    assert slept == [1.0]


async def test_relay_refusals_do_not_count_and_a_slow_recipient_check_is_awaited(store) -> None:
    slept: list[float] = []

    async def slow_inner(client, transaction, rcpt_to):  # as an SMTP callout would answer, later
        await asyncio.sleep(0)
        if rcpt_to.address.startswith("relay"):
            return refuse(f"554 5.7.1 <{rcpt_to.address}>: relay access denied")
        if rcpt_to.address.startswith("full"):
            return tempfail(f"452 4.2.2 <{rcpt_to.address}>: mailbox full")
        return refuse(f"550 5.1.1 <{rcpt_to.address}>: recipient unknown (callout)")

    check, client = guard(slow_inner, store, slept), Client()
    for n in range(5):
        await rcpt(check, client, f"relay{n}@elsewhere.test")
        await rcpt(check, client, f"full{n}@example.org")
    assert slept == [] and store.unknown_recipients(client.ip) == 0
    for n in range(3):
        assert (await rcpt(check, client, f"x{n}@example.org")).reply.startswith("550 5.1.1")
    assert slept == [1.0]


async def test_authenticated_and_exempt_clients_are_neither_counted_nor_slowed(recipients, store) -> None:
    slept: list[float] = []
    check = guard(recipients, store, slept, exempt=(ipaddress.ip_network("127.0.32.128/25"),), ban_after=2)
    for client in (Client(login="alice@example.org"), Client(ip="127.0.32.200")):
        for n in range(10):
            assert (await rcpt(check, client, f"n{n}@example.org")).reply.startswith("550 5.1.1")
    assert slept == [] and store.in_force() == []


async def test_a_ban_by_another_session_stops_a_suspect_at_its_next_rcpt(recipients, store) -> None:
    slept: list[float] = []
    check, suspect = guard(recipients, store, slept, ban_after=3), Client()
    await rcpt(check, suspect, "n0@example.org")
    for n in range(2):
        await rcpt(check, Client(), f"m{n}@example.org")  # the third unknown one, in another session, bans
    assert (await rcpt(check, suspect, "alice@example.org")).reply.startswith("421 4.7.0 127.0.32.40 is banned")


def test_only_550_5_1_1_is_an_unknown_recipient() -> None:
    assert is_unknown_recipient(refuse("550 5.1.1 <a@b.example>: no such user here"))
    for result in (None, refuse("550 5.7.1 <a@b.example>: relay access denied"),
                   tempfail("450 4.1.1 <a@b.example>: try later"), refuse("553 5.1.1 odd")):
        assert not is_unknown_recipient(result)
