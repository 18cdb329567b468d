"""A full disk, on a real filesystem (a small tmpfs): refused attempts leave nothing behind, the client hears
452 4.3.1 (RFC 3463: mail system full), and a state log that cannot be written costs a retry, not a traceback."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import smtplib
import time
from collections.abc import Callable

import pytest
from peers.disk import fill
from peers.named import free_port

from appliance.delivery.client import RcptResult
from appliance.delivery.router import HOSTS, Route
from appliance.message import codes
from appliance.message.model import QueuedMessage, Recipient
from appliance.queue.runner import QueueRunner
from appliance.queue.spool import Spool


def _message(queue_id: str) -> QueuedMessage:
    return QueuedMessage(queue_id=queue_id, mail_from="alice@example.com",
                         recipients=[Recipient("bob@example.org", "bob@example.org")], arrival=time.time())


@pytest.mark.parametrize("reuse", [False, True])
def test_a_refused_write_leaves_no_file_in_tmp(small_disk, reuse: bool) -> None:
    disk = small_disk("1m")
    spool = Spool(disk / "spool", reuse=reuse)
    if reuse:  # a file waiting in free/ is taken, then the write over it fails
        spool.write(_message("OLD"), b"x" * 8_192)
        spool.remove_now("OLD", reuse=True)
        assert [p.name for p in spool.free_dir.iterdir()] == ["OLD"]
    filler = fill(disk)
    for n in range(20):
        with pytest.raises(OSError) as refused:
            spool.write(_message(f"M{n}"), b"y" * 200_000)
        assert refused.value.errno == errno.ENOSPC
        assert list(spool.tmp_dir.iterdir()) == [], f"attempt {n} left its file"
    assert list(spool.msg_dir.iterdir()) == []
    os.unlink(filler)
    spool.write(_message("AFTER"), b"z" * 200_000)  # room again: the spool works as before
    assert spool.load("AFTER", verify=True).read_data() == b"z" * 200_000


def test_room_for_a_small_message_after_refusing_a_large_one(small_disk) -> None:
    """A partial file is not kept: the blocks it took go back at once, to the next (smaller) message."""
    disk = small_disk("1m")
    spool = Spool(disk / "spool", reuse=False)
    filler = fill(disk)
    os.truncate(filler, os.path.getsize(filler) - 64 * 1024)  # 64 KB left
    with pytest.raises(OSError):
        spool.write(_message("BIG"), b"b" * 500_000)
    spool.write(_message("SMALL"), b"s" * 40_000)
    assert [p.name for p in spool.msg_dir.iterdir()] == ["SMALL"]
    assert list(spool.tmp_dir.iterdir()) == []


def test_smtp_answers_mail_system_full_and_keeps_nothing(small_disk, mailfleet_factory) -> None:
    """`mailfleet serve` with its data on a full disk: every DATA is refused with 452 4.3.1, spool/tmp stays
    empty, and once there is room again the next message is accepted."""
    disk = small_disk("12m")  # the acceptors' shared tables take 4 MB of it (the per-client limits' counts)
    dead = free_port(["127.0.0.1"])  # the destination is down: accepted mail stays in the spool
    server = mailfleet_factory({
        "roles": ["incoming_gateway"],
        "data_dir": str(disk / "data"),
        "smtp": {"workers": 2},  # acceptor processes, as on any host with two cores or more
        "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{dead}"], "verify": "none"}}},
    })
    # The acceptors' shared session table (a mapped file) must have its page before the disk fills: a write
    # to a mapped page the filesystem cannot back is a SIGBUS, not an error to answer.
    table = disk / "data" / "smtp-sessions"
    server.wait_for(lambda: table.exists() and os.stat(table).st_blocks > 0, what="the acceptors to start")
    filler = fill(disk)
    body = b"Subject: full\r\n\r\n" + b"x" * 76 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        for _ in range(10):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                conn.sendmail("s@outside.test", ["u@fwd.test"], body * 2_000)
            assert refused.value.smtp_code == 452
            assert refused.value.smtp_error.startswith(b"4.3.1 "), refused.value.smtp_error
            assert list((disk / "data" / "spool" / "tmp").iterdir()) == []
        os.unlink(filler)
        conn.sendmail("s@outside.test", ["u@fwd.test"], body)
    assert len(server.queue_ids()) == 1
    assert "could not be queued" in server.log()


@pytest.mark.parametrize("error, reply", [(errno.ENOSPC, "452 4.3.1 "), (errno.EDQUOT, "452 4.3.1 "),
                                          (errno.EIO, "451 4.3.0 ")])
def test_the_reply_to_a_failed_queue_write(error: int, reply: str) -> None:
    assert codes.queue_failure(OSError(error, os.strerror(error))).startswith(reply)


class _OneRoute:
    """Every recipient by one route (the runner asks only ``route``)."""

    def route(self, address: str) -> Route:
        return Route(HOSTS, "forward:example.org", (1.0,))


class _Peer:
    """The remote delivery: answers ``reply`` and counts the attempts."""

    def __init__(self, reply: RcptResult) -> None:
        self.reply = reply
        self.attempts = 0

    async def __call__(self, target: object, sender: str, addresses: list[str], data: bytes,
                      **options: object) -> dict[str, RcptResult]:
        self.attempts += 1
        return {a: self.reply for a in addresses}


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _spool_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "appliance.queue" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("reply, what", [
    (RcptResult(421, "4.4.1", "try later", None), "state log"),
    (RcptResult(550, "5.1.1", "no such user", "mx.example.org"), "bounce"),
])
async def test_a_state_write_refused_by_the_disk_is_one_line_and_a_retry(
        small_disk, caplog: pytest.LogCaptureFixture, reply: RcptResult, what: str) -> None:
    """The state log (after a 4xx) or the bounce (after a 5xx) cannot be written: one ERROR line without a
    traceback, the message stays queued, and it goes out once the disk has room again."""
    disk = small_disk("1m")
    spool = Spool(disk / "spool", reuse=False)
    peer = _Peer(reply)
    runner = QueueRunner(spool, _OneRoute(), peer, None, "mx.mailfleet.test", lifetime=86400.0)  # type: ignore[arg-type]
    message = _message("M1")
    spool.write(message, b"Subject: x\r\n\r\nbody\r\n")
    if what == "bounce":  # a state log with room left in its page: only the bounce needs new blocks
        spool.record(message, message.recipients)
    filler = fill(disk)
    task = asyncio.create_task(runner.run())
    try:
        with caplog.at_level(logging.INFO, logger="appliance.queue"):
            runner.enqueue(message)
            await _until(lambda: _spool_errors(caplog), f"the {what} write to fail")
            await asyncio.sleep(0.3)  # no loop of attempts meanwhile
            errors = _spool_errors(caplog)
            assert len(errors) == 1 and errors[0].exc_info is None, errors
            assert "No space left on device" in errors[0].getMessage()
            assert "the message stays queued" in errors[0].getMessage()
            assert peer.attempts == 1
            assert runner.knows("M1") and (spool.msg_dir / "M1").exists()

            os.unlink(filler)
            peer.reply = RcptResult(250, "2.0.0", "ok", "mx.example.org")
            runner.flush("M1")
            await _until(lambda: not runner.knows("M1"), "the message to leave the queue")
            assert len(_spool_errors(caplog)) == 1
    finally:
        await runner.stop()
        task.cancel()
        spool.close()
