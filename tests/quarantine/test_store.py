"""The quarantine's files: whole after put, damaged ones listed as such, IDs that cannot name another file, delete,
and release into a real spool, which lets go of the quarantine file only once the spool holds the message."""

from __future__ import annotations

import errno
import json
import os
import time
import zlib
from pathlib import Path

import pytest
from peers.disk import fill

from appliance.message.model import (
    META_CRLF_ONLY,
    META_FOLDER,
    META_QUARANTINE,
    PENDING,
    QueuedMessage,
    Recipient,
    new_queue_id,
)
from appliance.quarantine.store import Damaged, NotHeld, Quarantine, QuarantineError
from appliance.queue.spool import Spool

VERDICT = {"scanner": "clamav", "virus": "Eicar-Test-Signature", "reason": "virus Eicar-Test-Signature"}
DATA = b"Subject: held\r\nMessage-ID: <held@client.test>\r\n\r\nX5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR\r\n"


def held_message(queue_id: str | None = None, verdict: dict | None = None) -> QueuedMessage:
    return QueuedMessage(
        queue_id=queue_id or new_queue_id(), mail_from="sender@outside.test",
        recipients=[Recipient("bob@home.test", "bob@home.test"), Recipient("carol@home.test", "c@home.test")],
        arrival=time.time(), client="192.0.2.7", helo="client.test",
        meta={META_CRLF_ONLY: True, META_FOLDER: "Junk", META_QUARANTINE: verdict or VERDICT})


def test_a_put_message_is_one_whole_file_with_envelope_verdict_and_data(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    message = held_message()
    quarantine.put(message, DATA)

    assert os.listdir(quarantine.tmp_dir) == []
    raw = (quarantine.msg_dir / message.queue_id).read_bytes()
    head, _, rest = raw.partition(b"\n")
    magic, env_len, data_len, crc = head.split()
    envelope, data = rest[:int(env_len)], rest[int(env_len) + 1:]
    assert (magic, int(data_len), data) == (b"MFH1", len(DATA), DATA)
    assert int(crc, 16) == zlib.crc32(DATA, zlib.crc32(envelope))
    stored = json.loads(envelope)
    assert stored["from"] == "sender@outside.test"
    assert stored["rcpts"] == [["bob@home.test", "bob@home.test"], ["carol@home.test", "c@home.test"]]
    assert stored["meta"][META_QUARANTINE] == VERDICT

    held = quarantine.get(message.queue_id)
    assert held.data == DATA and held.verdict == VERDICT
    assert (held.message.mail_from, held.message.client, held.message.helo) == (
        "sender@outside.test", "192.0.2.7", "client.test")
    assert [(r.address, r.original) for r in held.message.recipients] == [
        ("bob@home.test", "bob@home.test"), ("carol@home.test", "c@home.test")]
    [entry] = quarantine.list()
    assert (entry.queue_id, entry.sender, entry.recipients, entry.size, entry.reason, entry.damaged) == (
        message.queue_id, "sender@outside.test", ("bob@home.test", "carol@home.test"), len(DATA),
        "virus Eicar-Test-Signature", None)


def test_a_full_disk_refuses_the_put_and_leaves_nothing_behind(small_disk) -> None:
    disk = small_disk("1m")
    quarantine = Quarantine(disk / "quarantine")
    filler = fill(disk)
    with pytest.raises(OSError) as refused:
        quarantine.put(held_message(), DATA * 5_000)
    assert refused.value.errno == errno.ENOSPC
    assert os.listdir(quarantine.tmp_dir) == [] and os.listdir(quarantine.msg_dir) == []
    os.unlink(filler)
    quarantine.put(held_message(), DATA)
    assert [entry.damaged for entry in quarantine.list()] == [None]


def test_damaged_files_are_listed_as_damaged_beside_the_whole_ones(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    whole, torn, flipped, renamed = (held_message() for _ in range(4))
    for message in (whole, torn, flipped, renamed):
        quarantine.put(message, DATA)
    path = quarantine.msg_dir / torn.queue_id
    os.truncate(path, path.stat().st_size - 10)  # a power loss before the flush
    path = quarantine.msg_dir / flipped.queue_id
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x20  # a bad block
    path.write_bytes(bytes(raw))
    os.rename(quarantine.msg_dir / renamed.queue_id, quarantine.msg_dir / "OTHERNAME")
    (quarantine.msg_dir / "FOREIGN").write_bytes(b"MFQ1 2 2 00000000\n{}\nab")  # a spool file, moved by hand

    entries = {entry.queue_id: entry for entry in quarantine.list()}
    assert entries[whole.queue_id].damaged is None
    assert "torn write" in (entries[torn.queue_id].damaged or "")
    assert "checksum" in (entries[flipped.queue_id].damaged or "")
    assert f"names message {renamed.queue_id}" in (entries["OTHERNAME"].damaged or "")
    assert "not a quarantine file" in (entries["FOREIGN"].damaged or "")
    assert len(entries) == 5
    with pytest.raises(Damaged, match="checksum"):
        quarantine.get(flipped.queue_id)
    quarantine.delete(torn.queue_id)  # what cannot be released can still be removed
    assert torn.queue_id not in quarantine.ids()


@pytest.mark.parametrize("bad", ["../spool/msg/X", "..", "a/b", "", ".hidden", "ID WITH SPACE", "x" * 65])
def test_an_id_that_is_not_a_queue_id_names_no_file(tmp_path: Path, bad: str) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    victim = tmp_path / "quarantine" / "spool" / "msg"
    victim.mkdir(parents=True)
    (victim / "X").write_bytes(b"keep me")
    for action in (quarantine.get, quarantine.delete):
        with pytest.raises(QuarantineError, match="is not a queue ID"):
            action(bad)
    assert (victim / "X").read_bytes() == b"keep me"


def test_an_unknown_id_is_named_in_the_error(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    for action in (quarantine.get, quarantine.delete):
        with pytest.raises(NotHeld, match="no message 0123ABCD in the quarantine"):
            action("0123ABCD")


def test_delete_removes_the_message_and_only_it(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    kept, gone = held_message(), held_message()
    quarantine.put(kept, DATA)
    quarantine.put(gone, DATA)
    quarantine.delete(gone.queue_id)
    assert [entry.queue_id for entry in quarantine.list()] == [kept.queue_id]
    with pytest.raises(NotHeld):
        quarantine.delete(gone.queue_id)


async def test_release_writes_the_message_into_the_spool_then_lets_it_go(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    spool = Spool(tmp_path / "spool")
    message = held_message()
    quarantine.put(message, DATA)

    released = await quarantine.release(message.queue_id, spool.commit)

    assert quarantine.list() == []
    queued = spool.load(message.queue_id, verify=True)
    assert queued.read_data() == DATA
    assert queued.mail_from == "sender@outside.test"
    assert [(r.address, r.original, r.status) for r in queued.recipients] == [
        ("bob@home.test", "bob@home.test", PENDING), ("carol@home.test", "c@home.test", PENDING)]
    # Delivered as if the scan had passed: neither the verdict nor the folder the check chose goes with it.
    assert queued.meta == {META_CRLF_ONLY: True}
    assert (released.path, released.size) == (queued.path, len(DATA))


async def test_a_spool_that_refuses_the_release_leaves_the_message_held(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    message = held_message()
    quarantine.put(message, DATA)

    async def full_spool(_message: QueuedMessage, _data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        await quarantine.release(message.queue_id, full_spool)
    assert quarantine.get(message.queue_id).data == DATA
    with pytest.raises(QuarantineError, match="is not a queue ID"):
        await quarantine.release("../x", full_spool)


async def test_a_damaged_file_is_never_released(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    spool = Spool(tmp_path / "spool")
    message = held_message()
    quarantine.put(message, DATA)
    path = quarantine.msg_dir / message.queue_id
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(Damaged):
        await quarantine.release(message.queue_id, spool.commit)
    assert spool.ids() == [] and quarantine.ids() == [message.queue_id]


def test_recover_drops_what_a_crash_left_half_written(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    quarantine.put(held_message(), DATA)
    (quarantine.tmp_dir / new_queue_id()).write_bytes(b"MFH1 10 ")  # a put cut short: never answered 250
    assert quarantine.recover() == 1
    assert os.listdir(quarantine.tmp_dir) == [] and len(quarantine.list()) == 1
