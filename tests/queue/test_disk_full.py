"""A full disk, on a real filesystem (a small tmpfs): refused attempts leave nothing behind, the client hears
452 4.3.1 (RFC 3463: mail system full), and a state log that cannot be written costs a retry, not a traceback."""

from __future__ import annotations

import errno
import os
import smtplib

import pytest
from peers.disk import fill
from peers.named import free_port

from appliance.message.model import QueuedMessage, Recipient
from appliance.queue.spool import Spool
from appliance.smtp import codes


def _message(queue_id: str) -> QueuedMessage:
    return QueuedMessage(queue_id=queue_id, mail_from="alice@example.com",
                         recipients=[Recipient("bob@example.org", "bob@example.org")], arrival=1_700_000_000.0)


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
    disk = small_disk("4m")
    dead = free_port(["127.0.0.1"])  # the destination is down: accepted mail stays in the spool
    server = mailfleet_factory({
        "roles": ["incoming_gateway"],
        "data_dir": str(disk / "data"),
        "smtp": {"workers": 2},  # acceptor processes, as on any host with two cores or more
        "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{dead}"]}}},
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
