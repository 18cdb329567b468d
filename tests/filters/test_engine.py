"""The filter engine's failure modes on real sockets: a daemon that hangs, one that is not there, on_error accept,
and the circuit breaker opening (logged once) and closing again.

Each test runs the real SMTP handler and engine on loopback with the pipeline ``filters.register`` builds from a
validated config, the real scanner clients inside it, and an intake target that keeps what was committed: what
the sender is answered and what would be stored are what a mail administrator would look at.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
import yaml
from peers.named import free_port
from peers.smtp_client import data_reply

from appliance.config.loader import parse_config
from appliance.filters import check as filters
from appliance.message.model import QueuedMessage, Recipient
from appliance.pipeline.intake import Intake
from appliance.pipeline.stages import Pipeline
from appliance.smtp.protocol import SMTPServerProtocol
from appliance.smtp.server import InboundHandler, ListenerOptions, SessionCounter

MESSAGE = b"From: a@far.test\r\nSubject: hello\r\n\r\njust a message\r\n"


class _KeepingTarget:
    """A delivery target that keeps each committed message and its bytes."""

    def __init__(self) -> None:
        self.committed: list[tuple[QueuedMessage, bytes]] = []

    def start(self, message: QueuedMessage) -> _KeepingTarget:
        self._message, self._data = message, b""
        return self

    def add_recipient(self, recipient: Recipient) -> None:
        pass

    def body(self, data: bytes) -> None:
        self._data = data

    async def commit(self) -> list[Recipient]:
        self.committed.append((self._message, self._data))
        return []

    def abort(self) -> None:
        pass


class _Clock:
    """The breaker's clock, moved by the test: the pause passes without a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Hanging:
    """A daemon that accepts connections, reads whatever comes and never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def stop(self) -> None:
        self.server.close()
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def hanging() -> AsyncIterator[_Hanging]:
    daemon = _Hanging()
    await daemon.start()
    yield daemon
    await daemon.stop()


def _config(scanners: list[dict], **filters_section: object):
    return parse_config(yaml.safe_dump({
        "hostname": "mx.test", "roles": ["incoming_gateway"],
        "incoming_gateway": {"domains": {"far.test": {"destinations": ["127.0.0.1:25"]}}},
        "filters": {"scanners": scanners, **filters_section}}), check_host=False)


class _Gateway:
    def __init__(self, config, clock: _Clock | None = None) -> None:
        self.pipeline = Pipeline()
        self.engine = filters.register(self.pipeline, config, clock or _Clock())
        self.target = _KeepingTarget()

    async def __aenter__(self) -> _Gateway:
        loop = asyncio.get_running_loop()
        handler = InboundHandler("mx.test", self.pipeline, Intake(self.target).commit, ListenerOptions("smtp"),
                                 None)
        counter = SessionCounter(10)
        self.server = await loop.create_server(
            lambda: SMTPServerProtocol(handler, counter, hostname="mx.test", data_size_limit=10_000_000,
                                       tls_context=None, require_starttls=False), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        await self.pipeline.stop()

    async def send(self, data: bytes = MESSAGE) -> aiosmtplib.SMTPResponse:
        """One transaction; the reply to DATA."""
        return await data_reply(self.port, "a@far.test", "b@far.test", data)

    def stored_headers(self, index: int = -1) -> bytes:
        return self.target.committed[index][1].split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")


TYPES = ("clamav", "spamassassin", "rspamd")


@pytest.mark.parametrize("kind", TYPES)
async def test_a_daemon_that_never_answers_costs_its_timeout_and_the_sender_retries(kind, hanging) -> None:
    config = _config([{"type": kind, "address": f"127.0.0.1:{hanging.server.sockets[0].getsockname()[1]}",
                       "timeout": "1s"}])
    async with _Gateway(config) as gateway:
        reply = await gateway.send()
    assert (reply.code, reply.message) == (451, f"4.7.1 Content scanner {kind} unavailable, try again later")
    assert hanging.connections >= 1
    assert gateway.target.committed == []


@pytest.mark.parametrize("kind", TYPES)
async def test_a_daemon_that_is_not_there_tempfails(kind, tmp_path: Path) -> None:
    config = _config([{"type": kind, "address": f"127.0.0.1:{free_port(['127.0.0.1'])}", "name": "tcp"},
                      {"type": kind, "address": f"unix:{tmp_path / 'missing.sock'}", "name": "unix",
                       "on_error": "accept"}])
    async with _Gateway(config) as gateway:
        reply = await gateway.send()
    assert (reply.code, reply.message) == (451, "4.7.1 Content scanner tcp unavailable, try again later")
    assert gateway.target.committed == []


async def test_on_error_accept_delivers_with_a_header_saying_the_scan_was_skipped() -> None:
    port = free_port(["127.0.0.1"])
    config = _config([{"type": "clamav", "address": f"127.0.0.1:{port}", "on_error": "accept"}])
    async with _Gateway(config) as gateway:
        reply = await gateway.send()
        assert reply.code == 250
    headers = gateway.stored_headers()
    summary = re.search(rb"X-Mailfleet-Scan: mx.test; clamav=skipped \(error: ([^)]*)\)", headers)
    assert summary is not None, headers
    assert f"127.0.0.1:{port}".encode() in summary[1] and b"Connection refused" in summary[1]
    assert b"X-Spam-Flag: NO" in headers


async def test_a_message_above_max_scan_size_is_not_sent_to_the_scanner(hanging) -> None:
    port = hanging.server.sockets[0].getsockname()[1]
    config = _config([{"type": "clamav", "address": f"127.0.0.1:{port}", "max_scan_size": 100}])
    async with _Gateway(config) as gateway:
        reply = await gateway.send(MESSAGE + b"x" * 200 + b"\r\n")
        assert reply.code == 250
    assert hanging.connections == 0
    assert b"X-Mailfleet-Scan: mx.test; clamav=skipped (larger than 100 bytes)" in gateway.stored_headers()


async def test_the_breaker_opens_after_n_failures_logs_once_and_stops_asking(hanging, caplog) -> None:
    port = hanging.server.sockets[0].getsockname()[1]
    config = _config([{"type": "clamav", "address": f"127.0.0.1:{port}", "timeout": "0.5s",
                       "on_error": "accept"}], breaker_failures=3, breaker_pause="60s")
    clock = _Clock()
    caplog.set_level(logging.DEBUG, "appliance.filters")
    async with _Gateway(config, clock) as gateway:
        for _ in range(6):
            assert (await gateway.send()).code == 250
        assert hanging.connections == 3  # the three that opened it; the other three were not asked
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "appliance.filters"]
        assert len(warnings) == 1
        assert "clamav failed 3 times in a row" in warnings[0].getMessage()
        assert "no answer within 0.5s" in warnings[0].getMessage()
        assert b"clamav=skipped (error: not asked while failing" in gateway.stored_headers()
        clock.now += 61  # the pause is over: the next message probes; it fails, so it stays open, quietly
        assert (await gateway.send()).code == 250
        assert (await gateway.send()).code == 250
        assert hanging.connections == 4
    assert len([r for r in caplog.records if r.levelno >= logging.INFO and r.name == "appliance.filters"]) == 2


async def test_the_breaker_closes_when_the_daemon_answers_again(tmp_path: Path, clamd_factory, caplog) -> None:
    socket_path = tmp_path / "clamd-0" / "clamd.sock"  # where clamd_factory's first daemon will listen
    config = _config([{"type": "clamav", "address": f"unix:{socket_path}", "on_error": "accept"}],
                     breaker_failures=2, breaker_pause="30s")
    clock = _Clock()
    caplog.set_level(logging.INFO, "appliance.filters")
    async with _Gateway(config, clock) as gateway:
        for _ in range(3):
            assert (await gateway.send()).code == 250
        assert b"clamav=skipped (error: not asked while failing" in gateway.stored_headers()
        await asyncio.to_thread(clamd_factory)  # the daemon is back ...
        assert (await gateway.send()).code == 250
        assert b"clamav=skipped (error: not asked" in gateway.stored_headers()  # ... but the pause is not over
        clock.now += 31
        assert (await gateway.send()).code == 250
        assert b"X-Mailfleet-Scan: mx.test; clamav=clean" in gateway.stored_headers()
        assert (await gateway.send()).code == 250
        assert b"X-Mailfleet-Scan: mx.test; clamav=clean" in gateway.stored_headers()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "appliance.filters"]
    assert [level for level, _ in lines] == ["INFO", "WARNING", "INFO"], lines
    assert "failed 2 times in a row" in lines[1][1] and "answers again" in lines[2][1]
