"""The quarantine as the intake's target: a message a check held goes there for every recipient and nowhere
else (not the mailboxes, not the spool), before the 250; a quarantine that cannot write it makes the client
send again (4xx), never a 250 for a message that is nowhere."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from peers.disk import fill
from peers.smtp_client import data_reply

from appliance.delivery.local import LocalDelivery, MailboxTarget
from appliance.message.model import META_QUARANTINE, QueuedMessage, Recipient, new_queue_id
from appliance.pipeline.intake import Intake
from appliance.pipeline.stages import Pipeline, Stage
from appliance.quarantine.store import Quarantine
from appliance.quarantine.target import QuarantineTarget
from appliance.queue.spool import Spool
from appliance.queue.target import SpoolTarget
from appliance.smtp.protocol import SMTPServerProtocol
from appliance.smtp.server import InboundHandler, ListenerOptions, SessionCounter
from appliance.store import MailStore

VERDICT = {"scanner": "spamd", "score": 31.5, "reason": "spam score 31.5 over 15"}
DATA = b"Subject: buy now\r\n\r\ncheap\r\n"


class Host:
    """The three targets of a primary, on real files: mailboxes for home.test, the spool, the quarantine."""

    def __init__(self, root: Path) -> None:
        self.mail_root = root / "mail"
        self.spool = Spool(root / "spool")
        self.quarantine = Quarantine(root / "quarantine")
        self.committed: list[str] = []
        mailboxes = MailboxTarget(LocalDelivery(MailStore(self.mail_root), "mx.home.test"))
        self.intake = Intake(SpoolTarget(self.spool, lambda m, _: self.committed.append(m.queue_id)), mailboxes,
                             lambda address: address.endswith("@home.test"),
                             quarantine=QuarantineTarget(self.quarantine))

    def mailbox_files(self) -> list[Path]:
        return [p for p in self.mail_root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur")]


def _message(rcpts: list[str], verdict: dict | None) -> QueuedMessage:
    return QueuedMessage(queue_id=new_queue_id(), mail_from="spammer@outside.test",
                         recipients=[Recipient(a, a) for a in rcpts], arrival=time.time(),
                         meta={META_QUARANTINE: verdict} if verdict is not None else {})


@pytest.mark.parametrize("rcpts", [["bob@home.test"], ["bob@home.test", "someone@far.test"]])
async def test_a_held_message_lands_in_the_quarantine_and_nowhere_else(tmp_path: Path, rcpts: list[str],
                                                                        caplog) -> None:
    host = Host(tmp_path)
    message = _message(rcpts, VERDICT)
    with caplog.at_level(logging.INFO, logger="appliance.quarantine"):
        await host.intake.commit(message, DATA)

    [entry] = host.quarantine.list()
    assert (entry.queue_id, entry.recipients, entry.verdict) == (message.queue_id, tuple(rcpts), VERDICT)
    assert host.quarantine.get(message.queue_id).data == DATA
    assert host.mailbox_files() == [] and host.spool.ids() == [] and host.committed == []
    assert (f"queue_id={message.queue_id} quarantined: from=<spammer@outside.test> rcpts={len(rcpts)} "
            "reason=spam score 31.5 over 15") in caplog.messages


async def test_without_a_verdict_the_same_message_is_delivered(tmp_path: Path) -> None:
    """The other half of "nowhere else": the verdict alone sends the message to the quarantine."""
    host = Host(tmp_path)
    await host.intake.commit(_message(["bob@home.test"], None), DATA)
    await host.intake.commit(_message(["someone@far.test"], None), DATA)
    assert len(host.mailbox_files()) == 1 and len(host.spool.ids()) == 1
    assert host.quarantine.list() == []


async def _smtp_host(host: Host, held: bool) -> tuple[object, int]:
    """The real SMTP handler and engine in front of ``host``, with a content check at DATA that holds every
    message (as a scanner's quarantine verdict does) when ``held``."""

    def scan(client, transaction, content):  # noqa: ANN001, ANN202
        if held:
            transaction.meta[META_QUARANTINE] = VERDICT
        return None

    pipeline = Pipeline()
    pipeline.register(Stage.DATA, scan)
    handler = InboundHandler("mx.home.test", pipeline, host.intake.commit, ListenerOptions("smtp"), None)
    counter = SessionCounter(10)
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTPServerProtocol(handler, counter, hostname="mx.home.test", data_size_limit=10_000_000,
                                   tls_context=None, require_starttls=False), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


SENDER, RCPT = "spammer@outside.test", "bob@home.test"


async def test_over_smtp_the_250_names_the_message_held_in_the_quarantine(tmp_path: Path) -> None:
    host = Host(tmp_path)
    server, port = await _smtp_host(host, held=True)
    try:
        reply = await data_reply(port, SENDER, RCPT, DATA)
    finally:
        server.close()
    assert reply.code == 250
    queue_id = reply.message.rsplit(" ", 1)[1]
    held = host.quarantine.get(queue_id)
    assert held.data.startswith(b"Received: from client.test") and held.data.endswith(DATA)
    assert held.verdict == VERDICT
    assert host.mailbox_files() == [] and host.spool.ids() == []


async def test_a_quarantine_on_a_full_disk_answers_452_and_keeps_nothing(small_disk) -> None:
    disk = small_disk("1m")
    host = Host(disk)
    filler = fill(disk)
    server, port = await _smtp_host(host, held=True)
    try:
        big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 500
        reply = await data_reply(port, SENDER, RCPT, big)
        assert (reply.code, reply.message.split(" ", 1)[0]) == (452, "4.3.1")
        assert host.quarantine.list() == [] and list(host.quarantine.tmp_dir.iterdir()) == []
        assert host.mailbox_files() == [] and host.spool.ids() == []
        filler.unlink()
        reply = await data_reply(port, SENDER, RCPT, DATA)  # room again: the sender's retry is held
        assert reply.code == 250
        assert [e.queue_id for e in host.quarantine.list()] == [reply.message.rsplit(" ", 1)[1]]
    finally:
        server.close()
