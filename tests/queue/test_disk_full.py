"""A full disk, on a real filesystem (a small tmpfs): refused attempts leave nothing behind, the client hears
452 4.3.1 (RFC 3463: mail system full), and a state log that cannot be written costs a retry, not a traceback."""

from __future__ import annotations

import errno
import os

import pytest
from peers.disk import fill

from appliance.message.model import QueuedMessage, Recipient
from appliance.queue.spool import Spool


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
