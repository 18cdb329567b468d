"""The message pipeline: checks run in order at each stage, synchronous or not, and what each result does.

The first tests drive Pipeline alone; the last ones drive the real SMTP handler and engine on a loopback socket
with aiosmtplib as the client, checks registered at every stage, and an intake whose target keeps what it got.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiosmtplib
import pytest

from appliance.message.model import QueuedMessage, Recipient
from appliance.pipeline.intake import Intake
from appliance.pipeline.stages import Pipeline, Stage, accept, note, refuse, tempfail
from appliance.smtp.protocol import SMTPServerProtocol
from appliance.smtp.server import InboundHandler, ListenerOptions, SessionCounter


@dataclass
class _Client:
    ip: str = "192.0.2.1"
    host_name: str | None = "client.test"
    login: str | None = None
    verdicts: dict[str, object] = field(default_factory=dict)


@dataclass
class _Transaction:
    mail_from: str | None = "a@x.test"
    rcpt_tos: list[str] = field(default_factory=list)
    size: int = 0
    smtp_utf8: bool = False
    verdicts: dict[str, object] = field(default_factory=dict)
    added_headers: list[tuple[str, str]] = field(default_factory=list)
    oversize: bool = False
    long_line: bool = False
    bare_line_ending: bool = False
    nul: bool = False


def test_checks_run_in_the_order_registered_until_one_ends_the_stage() -> None:
    seen: list[str] = []
    pipeline = Pipeline()
    pipeline.register(Stage.RCPT, lambda c, t, a: seen.append("first"))
    pipeline.register(Stage.RCPT, lambda c, t, a: seen.append("second") or refuse("550 5.7.1 no"))
    pipeline.register(Stage.RCPT, lambda c, t, a: seen.append("third"))
    result = pipeline.run(Stage.RCPT, _Client(), _Transaction(), None)
    assert seen == ["first", "second"]
    assert result is not None and result.refused and result.reply == "550 5.7.1 no"


def test_accept_skips_the_later_checks_of_that_stage_only() -> None:
    pipeline = Pipeline()
    pipeline.register(Stage.MAIL, lambda c, t, a: accept())
    pipeline.register(Stage.MAIL, lambda c, t, a: refuse("550 5.7.1 never asked"))
    pipeline.register(Stage.RCPT, lambda c, t, a: refuse("550 5.7.1 asked"))
    mail = pipeline.run(Stage.MAIL, _Client(), _Transaction(), None)
    assert mail is not None and not mail.refused
    rcpt = pipeline.run(Stage.RCPT, _Client(), _Transaction(), None)
    assert rcpt is not None and rcpt.reply == "550 5.7.1 asked"


def test_headers_and_verdicts_accumulate_and_connection_stages_keep_theirs_on_the_client() -> None:
    pipeline = Pipeline()
    pipeline.register(Stage.CONNECT, lambda c, t, a: note(verdicts=[("dnsbl", 0)]))
    pipeline.register(Stage.DATA, lambda c, t, a: note(headers=[("X-One", "1")], verdicts=[("spam", 2.5)]))
    pipeline.register(Stage.DATA, lambda c, t, a: note(headers=[("X-Two", "2")]))
    client, transaction = _Client(), _Transaction()
    assert pipeline.run(Stage.CONNECT, client, None, None) is None
    assert pipeline.run(Stage.DATA, client, transaction, b"") is None
    assert client.verdicts == {"dnsbl": 0}
    assert transaction.verdicts == {"spam": 2.5}
    assert transaction.added_headers == [("X-One", "1"), ("X-Two", "2")]


def test_an_async_check_is_awaited_and_the_checks_after_it_still_run() -> None:
    seen: list[str] = []

    async def slow(client: object, transaction: object, argument: object) -> None:
        await asyncio.sleep(0)
        seen.append("slow")

    pipeline = Pipeline()
    pipeline.register(Stage.DATA, lambda c, t, a: seen.append("sync"))
    pipeline.register(Stage.DATA, slow)
    pipeline.register(Stage.DATA, lambda c, t, a: seen.append("after") or tempfail("451 4.7.1 scanner busy"))
    outcome = pipeline.run(Stage.DATA, _Client(), _Transaction(), b"")
    assert seen == ["sync"]  # nothing past the async check runs before it is awaited
    result = asyncio.run(_await(outcome))
    assert seen == ["sync", "slow", "after"]
    assert result is not None and result.reply == "451 4.7.1 scanner busy"


async def _await(outcome: object) -> object:
    return await outcome  # type: ignore[misc]


def test_results_must_carry_a_reply_of_their_kind() -> None:
    with pytest.raises(ValueError, match="5xx"):
        refuse("451 4.3.0 not permanent")
    with pytest.raises(ValueError, match="4xx"):
        tempfail("550 5.0.0 not temporary")
    with pytest.raises(ValueError, match="2xx"):
        accept("550 5.0.0 not an acceptance")


def test_a_check_answering_something_else_is_a_bug_named_as_such() -> None:
    pipeline = Pipeline()
    pipeline.register(Stage.HELO, lambda c, t, a: "550 a string")
    with pytest.raises(TypeError, match="not a Result"):
        pipeline.run(Stage.HELO, _Client(), None, "x")


# ---------------------------------------------------------------------------------------------- on a socket


class _KeepingTarget:
    """A delivery target that keeps each committed message and its bytes."""

    def __init__(self) -> None:
        self.committed: list[tuple[QueuedMessage, bytes]] = []

    def start(self, message: QueuedMessage) -> _KeepingTarget._Delivery:
        return _KeepingTarget._Delivery(self, message)

    class _Delivery:
        def __init__(self, target: _KeepingTarget, message: QueuedMessage) -> None:
            self.target, self.message, self.data = target, message, b""
            self.recipients: list[Recipient] = []

        def add_recipient(self, recipient: Recipient) -> None:
            self.recipients.append(recipient)

        def body(self, data: bytes) -> None:
            self.data = data

        async def commit(self) -> list[Recipient]:
            self.target.committed.append((self.message, self.data))
            return []

        def abort(self) -> None:
            pass


async def _start(pipeline: Pipeline, target: _KeepingTarget) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    intake = Intake(target)
    handler = InboundHandler("mx.test", pipeline, intake.commit, ListenerOptions("smtp"), None)
    counter = SessionCounter(10)
    server = await loop.create_server(
        lambda: SMTPServerProtocol(handler, counter, hostname="mx.test", data_size_limit=10_000,
                                   tls_context=None, require_starttls=False), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_async_checks_at_every_stage_decide_over_a_real_session() -> None:
    """A slow check at each stage: the engine waits for it, then answers; its refusal reaches the client with
    the enhanced code, its headers reach the message, its verdict is there for the next stage."""

    async def connect(client, transaction, argument):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.01)
        return note(verdicts=[("reputation", "good")])

    async def helo(client, transaction, name):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.01)
        return refuse("550 5.7.1 that name is not yours") if name == "forged.test" else None

    async def mail(client, transaction, sender):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.01)
        return tempfail("451 4.7.1 try later") if sender.address == "slow@x.test" else None

    async def rcpt(client, transaction, rcpt):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.01)
        return refuse("550 5.1.1 nobody here") if rcpt.address.startswith("nobody@") else None

    async def data(client, transaction, content):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.01)
        if b"EICAR" in content:
            return refuse("554 5.7.1 virus found")
        return note(headers=[("X-Scanned", f"clean; reputation={client.verdicts['reputation']}\nsecond line")])

    pipeline = Pipeline()
    for stage, check in ((Stage.CONNECT, connect), (Stage.HELO, helo), (Stage.MAIL, mail), (Stage.RCPT, rcpt),
                         (Stage.DATA, data)):
        pipeline.register(stage, check)
    target = _KeepingTarget()
    server, port = await _start(pipeline, target)
    try:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
        await smtp.connect()
        reply = await smtp.execute_command(b"EHLO", b"forged.test")
        assert (reply.code, reply.message) == (550, "5.7.1 that name is not yours")
        assert (await smtp.ehlo(hostname="client.test")).code == 250
        reply = await smtp.execute_command(b"MAIL", b"FROM:<slow@x.test>")
        assert (reply.code, reply.message) == (451, "4.7.1 try later")
        assert (await smtp.mail("a@x.test")).code == 250
        reply = await smtp.execute_command(b"RCPT", b"TO:<nobody@x.test>")
        assert (reply.code, reply.message) == (550, "5.1.1 nobody here")
        assert (await smtp.rcpt("b@x.test")).code == 250
        reply = await smtp.data(b"Subject: hi\r\n\r\nclean\r\n")
        assert reply.code == 250 and "queued as" in reply.message
        await smtp.mail("a@x.test")
        await smtp.rcpt("b@x.test")
        with pytest.raises(aiosmtplib.SMTPDataError) as virus:
            await smtp.data(b"Subject: bad\r\n\r\nEICAR\r\n")
        assert (virus.value.code, virus.value.message) == (554, "5.7.1 virus found")
        await smtp.quit()
    finally:
        server.close()
        await server.wait_closed()
    [(message, stored)] = target.committed
    assert [r.address for r in message.recipients] == ["b@x.test"]
    header_block = stored.split(b"\r\n\r\n", 1)[0]
    assert b"X-Scanned: clean; reputation=good\r\n\tsecond line\r\n" in header_block  # folded, never a new field
    assert stored.index(b"Received:") < stored.index(b"X-Scanned:") < stored.index(b"Subject: hi")


async def test_a_refusal_at_connect_is_the_greeting_and_the_connection_ends() -> None:
    pipeline = Pipeline()
    pipeline.register(Stage.CONNECT, lambda c, t, a: refuse("554 5.7.1 listed at a blocklist"))
    server, port = await _start(pipeline, _KeepingTarget())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await asyncio.wait_for(reader.read(1000), 10)
        assert greeting == b"554 5.7.1 listed at a blocklist\r\n"
        assert await asyncio.wait_for(reader.read(1000), 10) == b""  # closed by the server
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
