"""The spool's files on disk: reuse of delivered messages' files, the checksum, the filesystem probe."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from appliance.message.model import QueuedMessage, Recipient, SpoolCorrupt
from appliance.queue import spool as spool_mod
from appliance.queue.spool import Spool, creation_skips_deleted_inodes


def _message(queue_id: str, rcpt: str = "bob@example.org") -> QueuedMessage:
    return QueuedMessage(queue_id=queue_id, mail_from="alice@example.com", recipients=[Recipient(rcpt, rcpt)],
                         arrival=1_700_000_000.0, client="192.0.2.1")


def _body(marker: bytes, size: int) -> bytes:
    line = b"Subject: " + marker + b"\r\n"
    return line + b"x" * (size - len(line) - 2) + b"\r\n"


def test_a_delivered_message_file_carries_the_next_message(tmp_path: Path) -> None:
    """A file given back after delivery is written over by the next message, cut to its size: nothing of the
    earlier message is left in it."""
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("A1"), _body(b"first-secret", 50_000))
    inode = os.stat(spool.msg_dir / "A1").st_ino
    spool.remove_now("A1", reuse=True)
    assert not (spool.msg_dir / "A1").exists()
    assert [p.name for p in spool.free_dir.iterdir()] == ["A1"]

    second = _body(b"second", 3_000)
    spool.write(_message("B2", "carol@example.org"), second)
    path = spool.msg_dir / "B2"
    assert os.stat(path).st_ino == inode  # the same file, no new inode
    assert list(spool.free_dir.iterdir()) == []
    assert b"first-secret" not in path.read_bytes()
    loaded = spool.load("B2", verify=True)
    assert loaded.read_data() == second
    assert [r.address for r in loaded.recipients] == ["carol@example.org"]


def test_a_longer_message_grows_a_reused_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("A1"), _body(b"short", 500))
    spool.remove_now("A1", reuse=True)
    longer = _body(b"long", 200_000)
    spool.write(_message("B2"), longer)
    assert spool.load("B2", verify=True).read_data() == longer


def test_without_reuse_a_delivered_message_file_is_unlinked(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse=False)
    spool.write(_message("A1"), _body(b"one", 2_000))
    spool.remove_now("A1", reuse=True)
    assert list(spool.msg_dir.iterdir()) == [] and list(spool.free_dir.iterdir()) == []


def test_a_message_the_administrator_deletes_leaves_no_bytes_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("A1"), _body(b"one", 2_000))
    spool.remove_now("A1")
    assert list(spool.msg_dir.iterdir()) == [] and list(spool.free_dir.iterdir()) == []


def test_free_files_are_bounded_in_number_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "FREE_LIMIT", 3)
    monkeypatch.setattr(spool_mod, "FREE_MAX_SIZE", 10_000)
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("BIG"), _body(b"big", 20_000))
    spool.remove_now("BIG", reuse=True)
    assert list(spool.free_dir.iterdir()) == []  # too large to keep
    writer = Spool(tmp_path / "spool", reuse=True)  # an acceptor: it writes, the queue process above gives back
    for i in range(6):
        writer.write(_message(f"M{i}"), _body(b"m", 2_000))
    for i in range(6):
        spool.remove_now(f"M{i}", reuse=True)
    assert len(list(spool.free_dir.iterdir())) == 3
    assert list(spool.msg_dir.iterdir()) == []


def test_two_acceptors_never_write_into_the_same_free_file(tmp_path: Path) -> None:
    """Each takes a free file by renaming it: the second finds it gone and makes a new file."""
    first, second = Spool(tmp_path / "spool", reuse=True), Spool(tmp_path / "spool", reuse=True)
    first.write(_message("OLD"), _body(b"old", 5_000))
    first.remove_now("OLD", reuse=True)
    first._free_names, second._free_names = os.listdir(first.free_dir), os.listdir(first.free_dir)  # both saw it
    a, b = _body(b"for-a", 4_000), _body(b"for-b", 6_000)
    first.write(_message("NA"), a)
    second.write(_message("NB"), b)
    assert os.stat(first.msg_dir / "NA").st_ino != os.stat(first.msg_dir / "NB").st_ino
    assert first.load("NA", verify=True).read_data() == a
    assert first.load("NB", verify=True).read_data() == b


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, buffers: real(fd, [bytes(buffers[0][:7])]))
    spool = Spool(tmp_path / "spool", reuse=False)
    data = _body(b"whole", 70_000)
    spool.write(_message("W1"), data)
    assert spool.load("W1", verify=True).read_data() == data


def test_bytes_that_do_not_match_the_checksum_are_set_aside_at_start_up(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A power loss can leave a renamed file whose blocks still hold an older file's bytes, at the right length;
    the CRC tells, and the message (never answered 250) is not delivered."""
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("T1"), _body(b"new", 8_000))
    path = spool.msg_dir / "T1"
    raw = bytearray(path.read_bytes())
    raw[-4_000:-2_000] = b"o" * 2_000  # same length, other bytes
    path.write_bytes(bytes(raw))
    assert spool.load("T1").queue_id == "T1"  # the lengths alone do not show it
    with caplog.at_level(logging.WARNING, logger="appliance.queue"):
        assert list(spool.messages(verify=True)) == []
    assert (spool.corrupt_dir / "T1").exists()
    assert "does not match its checksum" in caplog.text


def test_a_spool_file_without_checksum_still_loads(tmp_path: Path) -> None:
    """Files written before the checksum existed (three header fields) are read as they are."""
    spool = Spool(tmp_path / "spool", reuse=False)
    message = _message("OLD1")
    envelope = message.envelope_json()
    data = _body(b"old", 1_000)
    (spool.msg_dir / "OLD1").write_bytes(b"MFQ1 %d %d\n" % (len(envelope), len(data)) + envelope + b"\n" + data)
    loaded = next(spool.messages(verify=True))
    assert loaded.queue_id == "OLD1" and loaded.read_data() == data


def test_a_file_whose_envelope_names_another_message_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse=False)
    spool.write(_message("X1"), _body(b"x", 1_000))
    os.rename(spool.msg_dir / "X1", spool.msg_dir / "Y1")
    with pytest.raises(SpoolCorrupt, match="names message X1"):
        spool.load("Y1")


def test_a_message_delivered_while_it_is_listed_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`queue list` beside a running server: the file may go to free/ (and carry the next message) between the
    listing and the read; that is no corrupt message and nothing to move."""
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("G1"), _body(b"gone", 1_000))
    real_load = spool.load

    def load_while_delivered(queue_id: str, verify: bool = False) -> QueuedMessage:
        spool.remove_now(queue_id, reuse=True)
        raise SpoolCorrupt(f"{queue_id}: content does not match its checksum (torn write)")

    monkeypatch.setattr(spool, "load", load_while_delivered)
    assert list(spool.messages(verify=True)) == []
    assert list(spool.corrupt_dir.iterdir()) == []
    monkeypatch.setattr(spool, "load", real_load)


def test_recovery_trims_the_free_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "FREE_LIMIT", 2)
    root = tmp_path / "spool"
    spool = Spool(root, reuse=True)
    for i in range(4):
        (spool.free_dir / f"F{i}").write_bytes(b"old message")
    spool.recover()
    assert len(list(spool.free_dir.iterdir())) == 2
    Spool(root, reuse=False).recover()  # moved to a filesystem where files are not reused: all go
    assert list(spool.free_dir.iterdir()) == []


def _fake_sysfs(root: Path, device: int, name: str, journal_task: str | None) -> str:
    block = root / "devices" / "virtual" / "block" / name
    block.mkdir(parents=True)
    (root / "dev" / "block").mkdir(parents=True)
    (root / "dev" / "block" / f"{os.major(device)}:{os.minor(device)}").symlink_to(block)
    if journal_task is not None:
        (root / "fs" / "ext4" / name).mkdir(parents=True)
        (root / "fs" / "ext4" / name / "journal_task").write_text(journal_task + "\n")
    return str(root)


@pytest.mark.parametrize(("journal_task", "expected"), [("<none>", True), ("1671", False), (None, False)])
def test_the_probe_reads_whether_ext4_has_a_journal(tmp_path: Path, journal_task: str | None,
                                                     expected: bool) -> None:
    """ext4 without a journal ("<none>") reuses files; with one (its thread's PID), or not ext4 at all (no
    entry under fs/ext4), it does not."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    sys_root = _fake_sysfs(tmp_path / "sys", os.stat(spool_dir).st_dev, "vdz", journal_task)
    assert creation_skips_deleted_inodes(spool_dir, sys_root) is expected


def test_the_probe_says_no_without_sysfs(tmp_path: Path) -> None:
    assert creation_skips_deleted_inodes(tmp_path, str(tmp_path / "no-sys")) is False


def test_an_unusable_free_directory_turns_reuse_off_and_delivery_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """free/ made by root running the CLI before the service (running as its own user) first started: the
    renames into it fail; the delivered message's file is unlinked instead, with one warning."""
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("P1"), _body(b"p", 1_000))
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if "/free/" in str(dst):
            raise PermissionError(13, "Permission denied")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with caplog.at_level(logging.WARNING, logger="appliance.queue"):
        spool.remove_now("P1", reuse=True)
    assert list(spool.msg_dir.iterdir()) == [] and list(spool.free_dir.iterdir()) == []
    assert spool.reuse is False
    assert "Permission denied; spool files are no longer reused" in caplog.text
    spool.write(_message("P2"), _body(b"p2", 1_000))  # new files from now on
    assert spool.load("P2", verify=True).queue_id == "P2"


def test_an_unreadable_free_directory_turns_reuse_off_and_delivery_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.write(_message("R1"), _body(b"r", 1_000))
    real_listdir = os.listdir

    def listdir(path: str | Path) -> list[str]:
        if str(path).endswith("/free"):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    spool.remove_now("R1", reuse=True)
    assert list(spool.msg_dir.iterdir()) == [] and spool.reuse is False


def test_a_free_directory_removed_under_the_service_leaves_no_delivered_message_behind(tmp_path: Path) -> None:
    """The rename into a vanished free/ fails as "not found", like a file already gone; the message file must
    still go, or the rescan would deliver it a second time."""
    spool = Spool(tmp_path / "spool", reuse=True)
    for queue_id in ("A1", "B2"):
        spool.write(_message(queue_id), _body(b"x", 1_000))
    spool.remove_now("A1", reuse=True)  # counts free/: room for more without looking again
    for path in spool.free_dir.iterdir():
        path.unlink()
    spool.free_dir.rmdir()
    spool.remove_now("B2", reuse=True)
    assert list(spool.msg_dir.iterdir()) == []


def test_a_damaged_file_is_handed_over_with_its_envelope_then_set_aside(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Its recipients' states come along (a recipient delivered before the damage is not reported lost), and
    the file is still in msg/ while the handler runs: what it writes is on disk before the file moves."""
    spool = Spool(tmp_path / "spool", reuse=False)
    message = QueuedMessage(queue_id="D1", mail_from="alice@example.com", arrival=1_700_000_000.0,
                            recipients=[Recipient("bob@example.org", "bob@example.org"),
                                        Recipient("carol@example.org", "carol@example.org")])
    spool.write(message, _body(b"rot", 5_000))
    message.recipients[0].status = "delivered"
    spool.record(message, message.recipients[:1])
    path = spool.msg_dir / "D1"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x20  # one flipped bit
    path.write_bytes(bytes(raw))
    handed: list[SpoolCorrupt] = []

    def on_damaged(damaged: SpoolCorrupt) -> None:
        assert path.exists()
        handed.append(damaged)

    with caplog.at_level(logging.ERROR, logger="appliance.queue"):
        assert list(spool.messages(verify=True, on_damaged=on_damaged)) == []
    assert [d.queue_id for d in handed] == ["D1"]
    lost = handed[0].message
    assert lost is not None and lost.mail_from == "alice@example.com"
    assert [(r.address, r.status) for r in lost.recipients] == [("bob@example.org", "delivered"),
                                                                ("carol@example.org", "pending")]
    assert (spool.corrupt_dir / "D1").exists() and not path.exists()
    assert "does not match its checksum" in caplog.text and "the envelope is readable" in caplog.text
    assert [(d.queue_id, d.message is not None) for d in spool.damaged()] == [("D1", True)]


def test_no_envelope_is_trusted_from_a_file_that_names_another_message(tmp_path: Path) -> None:
    """A reused file whose blocks still hold the older message's bytes: that envelope is not this message's
    (its sender must not be told of a loss), and neither is a garbled one."""
    spool = Spool(tmp_path / "spool", reuse=False)
    spool.write(_message("OLD1"), _body(b"old", 3_000))
    raw = (spool.msg_dir / "OLD1").read_bytes()
    os.unlink(spool.msg_dir / "OLD1")
    (spool.msg_dir / "NEW1").write_bytes(raw[:-10] + b"z" * 10)  # named NEW1, old bytes, checksum off
    (spool.msg_dir / "JUNK1").write_bytes(b"\x00" * 200)
    handed: list[SpoolCorrupt] = []
    assert list(spool.messages(verify=True, on_damaged=handed.append)) == []
    assert sorted((d.queue_id, d.message) for d in handed) == [("JUNK1", None), ("NEW1", None)]
