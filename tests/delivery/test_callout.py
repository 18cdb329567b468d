"""The recipient callout (delivery/callout.py) against real SMTP peers on loopback: what it concludes from each
answer, failover between destinations, hostile and silent peers, and its SQLite cache (TTLs, shared between
processes' connections)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peers.named import free_port

from appliance.config import HostPort
from appliance.config.model import CalloutConfig
from appliance.delivery.callout import CalloutCache, RecipientCallout, _one_line
from appliance.pipeline.recipients import Outcome, Verification

SETTINGS = CalloutConfig(timeout=5.0, positive_ttl=600.0, negative_ttl=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _callout(tmp_path: Path, clock: Clock | None = None) -> RecipientCallout:
    return RecipientCallout("gw.test.example", CalloutCache(tmp_path / "callouts.sqlite", clock or Clock()))


def _hp(sink) -> HostPort:
    return HostPort(sink.address, sink.port)


def _down() -> HostPort:
    return HostPort("127.0.0.1", free_port(["127.0.0.1"]))


async def test_a_2xx_is_valid_a_5xx_invalid_and_no_message_is_sent(tmp_path, smtp_sink):
    sink = smtp_sink(rcpt_replies={"ghost@example.net": "550 5.1.1 <ghost@example.net>: no such user"})
    callout = _callout(tmp_path)
    good = await callout.verify("alice@example.net", (_hp(sink),), SETTINGS)
    bad = await callout.verify("ghost@example.net", (_hp(sink),), SETTINGS)
    assert good.outcome is Outcome.VALID and "250" in good.detail
    assert bad.outcome is Outcome.INVALID and "550 5.1.1" in bad.detail
    assert sink.handler.rcpts == ["alice@example.net", "ghost@example.net"]
    assert sink.messages == [], "a callout never sends DATA"


async def test_the_next_destination_is_asked_when_one_is_down_busy_or_answers_4xx(tmp_path, smtp_sink, refusing_smtp):
    busy_port = free_port(["127.0.0.1"])
    refusing_smtp("127.0.0.1", busy_port)  # greets 421 and hangs up
    deferring = smtp_sink(rcpt_replies={"alice@example.net": "451 4.3.0 try later"})
    answering = smtp_sink()
    hosts = (_down(), HostPort("127.0.0.1", busy_port), _hp(deferring), _hp(answering))
    result = await _callout(tmp_path).verify("alice@example.net", hosts, SETTINGS)
    assert result.outcome is Outcome.VALID
    assert answering.handler.rcpts == ["alice@example.net"] and deferring.handler.rcpts == ["alice@example.net"]


async def test_no_final_answer_anywhere_is_unknown_and_not_cached(tmp_path, smtp_sink):
    deferring = smtp_sink(rcpt_replies={"alice@example.net": "452 4.2.2 mailbox full"})
    callout = _callout(tmp_path)
    result = await callout.verify("alice@example.net", (_down(), _hp(deferring)), SETTINGS)
    assert result.outcome is Outcome.UNKNOWN
    assert len(result.detail.split("; ")) == 2 and "452 4.2.2 mailbox full" in result.detail, result.detail
    assert callout.cached("alice@example.net", SETTINGS) is None


async def test_a_destination_that_never_answers_costs_the_timeout_and_counts_as_no_answer(tmp_path, smtp_sink):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel completes the handshake; nobody ever greets
    try:
        answering = smtp_sink()
        hosts = (HostPort("127.0.0.1", silent.getsockname()[1]), _hp(answering))
        quick = CalloutConfig(timeout=0.5)
        result = await _callout(tmp_path).verify("alice@example.net", hosts, quick)
        assert result.outcome is Outcome.VALID
        only_silent = await _callout(tmp_path / "2").verify("bob@example.net", hosts[:1], quick)
        assert only_silent.outcome is Outcome.UNKNOWN and "no answer within 0.5s" in only_silent.detail
    finally:
        silent.close()


async def test_concurrent_rcpts_for_one_address_share_one_callout(tmp_path, smtp_sink):
    sink = smtp_sink()
    callout = _callout(tmp_path)
    results = await asyncio.gather(*(callout.verify("Alice@example.net", (_hp(sink),), SETTINGS) for _ in range(5)))
    assert {r.outcome for r in results} == {Outcome.VALID}
    assert sink.handler.rcpts == ["Alice@example.net"]


async def test_positive_and_negative_answers_expire_after_their_own_ttl(tmp_path, smtp_sink):
    sink = smtp_sink(rcpt_replies={"ghost@example.net": "550 5.1.1 no such user"})
    clock = Clock()
    callout = _callout(tmp_path, clock)
    for address in ("alice@example.net", "ghost@example.net"):
        await callout.verify(address, (_hp(sink),), SETTINGS)
    assert callout.cached("ALICE@example.net", SETTINGS) == Verification(
        Outcome.VALID, callout.cached("alice@example.net", SETTINGS).detail, cached=True)
    clock.now += SETTINGS.negative_ttl
    assert callout.cached("ghost@example.net", SETTINGS) is None, "the negative answer outlived negative_ttl"
    assert callout.cached("alice@example.net", SETTINGS) is not None
    clock.now += SETTINGS.positive_ttl
    assert callout.cached("alice@example.net", SETTINGS) is None, "the positive answer outlived positive_ttl"


def test_the_cache_file_is_shared_between_connections_as_between_acceptor_processes(tmp_path):
    path = tmp_path / "callouts.sqlite"
    writer, reader = CalloutCache(path, Clock()), CalloutCache(path, Clock())
    assert reader.get("alice@example.net", SETTINGS) is None
    writer.put("alice@example.net", Verification(Outcome.INVALID, "mx: 550 5.1.1"), SETTINGS)
    assert reader.get("alice@example.net", SETTINGS) == Verification(Outcome.INVALID, "mx: 550 5.1.1", cached=True)
    writer.close()
    reader.close()


def test_an_unreadable_cache_is_logged_and_the_destination_asked(tmp_path, caplog):
    path = tmp_path / "callouts.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    callout = RecipientCallout("gw.test.example", CalloutCache(path, Clock()))
    assert callout.cached("alice@example.net", SETTINGS) is None
    assert "unreadable" in caplog.text


@given(st.text())
def test_a_peer_reply_reaches_the_log_as_one_short_printable_line(text):
    line = _one_line(text)
    assert len(line) <= 200
    assert all(32 <= ord(c) < 127 for c in line)


@pytest.mark.parametrize("reply", ["250 2.1.5 OK", "550 5.1.1 gone"])
def test_one_line_keeps_an_ordinary_reply_as_it_is(reply):
    assert _one_line(reply) == reply


async def test_a_session_that_ends_during_the_callout_cancels_it_for_no_one(tmp_path):
    """Two RCPTs wait for one callout; the first session goes away (its task cancelled) while the destination
    has not answered yet: the other still gets the answer, and it is cached."""
    rcpt_seen, release = asyncio.Event(), asyncio.Event()
    rcpts: list[bytes] = []

    async def destination(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"RCPT":
                rcpts.append(line)
                rcpt_seen.set()
                await release.wait()
            writer.write(b"221 bye\r\n" if verb == b"QUIT" else b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(destination, "127.0.0.1", 0)
    hosts = (HostPort("127.0.0.1", server.sockets[0].getsockname()[1]),)
    callout = _callout(tmp_path)
    try:
        leaving = asyncio.create_task(callout.verify("alice@example.net", hosts, SETTINGS))
        staying = asyncio.create_task(callout.verify("alice@example.net", hosts, SETTINGS))
        await rcpt_seen.wait()
        leaving.cancel()
        release.set()
        assert (await staying).outcome is Outcome.VALID
        assert leaving.cancelled()
        assert len(rcpts) == 1
        assert callout.cached("alice@example.net", SETTINGS) is not None
    finally:
        server.close()
        await server.wait_closed()
