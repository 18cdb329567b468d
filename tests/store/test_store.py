"""The mailbox store: durability, UIDs, folders, quota, crash recovery and concurrency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from waits import wait_until_async

from appliance.store import (
    FolderExists,
    FolderNotFound,
    InvalidAddress,
    InvalidFolderName,
    MailboxLocked,
    MailStore,
    QuotaExceeded,
)

MSG = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test\r\n\r\nHello\r\n"
ADDR = "bob@example.org"


def _in_threads(target, count: int) -> None:
    """Run target(0) ... target(count - 1) at once on threads and wait for all of them."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    s = MailStore(tmp_path / "mail")
    yield s
    s.close()


def test_deliver_writes_maildir_file_and_metadata(store: MailStore, tmp_path: Path) -> None:
    uid1 = store.deliver(ADDR, MSG)
    uid2 = store.deliver(ADDR, MSG + b"2")
    assert (uid1, uid2) == (1, 2)
    account = store.account(ADDR)
    infos = account.messages("INBOX")
    assert [i.uid for i in infos] == [1, 2]
    assert infos[0].path.parent == tmp_path / "mail" / "example.org" / "bob" / "cur"
    assert infos[0].path.read_bytes() == MSG
    assert infos[1].size == len(MSG) + 1
    assert not list((tmp_path / "mail" / "example.org" / "bob" / "tmp").iterdir())


def test_default_folders_with_special_use(store: MailStore) -> None:
    folders = {f.name: f.special_use for f in store.account(ADDR).folders()}
    assert folders == {"INBOX": None, "Sent": "\\Sent", "Drafts": "\\Drafts", "Junk": "\\Junk",
                       "Trash": "\\Trash", "Archive": "\\Archive"}


def test_deliver_into_folder_keeps_flags_and_date(store: MailStore, tmp_path: Path) -> None:
    when = datetime(2020, 5, 17, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    uid = store.deliver(ADDR, MSG, folder="Sent", flags=["\\seen", "$Forwarded"], internal_date=when)
    info = store.account(ADDR).message("Sent", uid)
    assert info.flags == {"\\Seen", "$Forwarded"}
    assert info.internal_date == when
    assert info.internal_date.utcoffset() == timedelta(hours=2)
    assert info.path.parent == tmp_path / "mail" / "example.org" / "bob" / ".Sent" / "cur"


def test_unknown_folder_and_bad_address_are_refused(store: MailStore) -> None:
    with pytest.raises(FolderNotFound):
        store.deliver(ADDR, MSG, folder="Nope")
    for bad in ("no-at-sign", "../x@example.org", "a/b@example.org", "a@..", "@example.org"):
        with pytest.raises(InvalidAddress):
            store.deliver(bad, MSG)


def test_quota_enforced_at_delivery(store: MailStore) -> None:
    store.set_quota(ADDR, len(MSG) * 2)
    store.deliver(ADDR, MSG)
    store.deliver(ADDR, MSG)
    with pytest.raises(QuotaExceeded) as exc:
        store.deliver(ADDR, MSG)
    assert not exc.value.permanent  # mailbox full: 452 4.2.2
    with pytest.raises(QuotaExceeded) as exc:
        store.deliver(ADDR, MSG * 3)
    assert exc.value.permanent  # bigger than the whole quota: 552 5.2.2
    assert store.quota(ADDR) == (len(MSG) * 2, len(MSG) * 2)
    account = store.account(ADDR)
    account.store_flags("INBOX", [1], ["\\Deleted"], "add")
    account.expunge("INBOX")
    assert store.deliver(ADDR, MSG) == 3
    store.set_quota(ADDR, 0)
    for _ in range(5):
        store.deliver(ADDR, MSG)


def test_batch_stores_what_fits_and_refuses_the_rest(store: MailStore, tmp_path: Path) -> None:
    from appliance.store.account import Delivery

    store.set_quota(ADDR, len(MSG) * 2 + 5)
    results = store.account(ADDR).deliver_batch(
        [Delivery("INBOX", MSG), Delivery("Nope", MSG), Delivery("INBOX", MSG + b"2"), Delivery("INBOX", MSG)])
    assert [r[1] for r in (results[0], results[2])] == [1, 2]
    assert isinstance(results[1], FolderNotFound)
    assert isinstance(results[3], QuotaExceeded) and not results[3].permanent
    infos = store.account(ADDR).messages("INBOX")
    assert [i.path.read_bytes() for i in infos] == [MSG, MSG + b"2"]
    assert store.quota(ADDR)[0] == len(MSG) * 2 + 1
    base = tmp_path / "mail" / "example.org" / "bob"
    assert len(list((base / "cur").iterdir())) == 2 and not list((base / "tmp").iterdir())


def test_parallel_submits_get_distinct_uids_and_all_land(store: MailStore) -> None:
    """Eight event loops on eight threads deliver to one mailbox at once (each loop batches its own)."""
    import asyncio

    results = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        async def run() -> list[tuple[int, int]]:
            return await asyncio.gather(*(store.deliver_async(ADDR, MSG + f"{n}-{i}".encode()) for i in range(50)))

        got = asyncio.run(run())
        with lock:
            results.extend(got)

    _in_threads(submit, 8)
    uids = sorted(uid for _, uid in results)
    assert uids == list(range(1, 401))
    bodies = {i.path.read_bytes() for i in store.account(ADDR).messages("INBOX")}
    assert bodies == {MSG + f"{n}-{i}".encode() for n in range(8) for i in range(50)}


def _first_delivery(root: str, start: float, results) -> None:  # runs in a child process
    while time.time() < start:
        pass
    try:
        results.put(MailStore(Path(root)).deliver(ADDR, MSG))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_mailbox_at_once_all_deliver(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for trial in range(5):
        root = tmp_path / f"mail{trial}"
        results = ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_first_delivery, args=(str(root), start, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = sorted(results.get(timeout=10) for _ in procs)
        assert got == [1, 2, 3, 4], got


def test_flags_modseq_and_expunge(store: MailStore) -> None:
    for _ in range(3):
        store.deliver(ADDR, MSG)
    account = store.account(ADDR)
    before = account.status("INBOX").highestmodseq
    changed, failed = account.store_flags("INBOX", [1, 2], ["\\Seen", "\\Deleted"], "add")
    assert [c.uid for c in changed] == [1, 2] and failed == []
    assert all(c.modseq > before for c in changed)
    # CONDSTORE UNCHANGEDSINCE: message 1 changed after `before`, so it is refused
    changed, failed = account.store_flags("INBOX", [1, 3], ["\\Flagged"], "add", unchanged_since=before)
    assert [c.uid for c in changed] == [3] and failed == [1]
    status = account.status("INBOX")
    assert (status.messages, status.unseen) == (3, 1)
    assert [m.uid for m in account.changed_since("INBOX", before)] == [1, 2, 3]
    files = {m.uid: m.path for m in account.messages("INBOX")}
    assert account.expunge("INBOX", uids=[2, 3]) == [2]
    assert not files[2].exists()
    assert account.expunge("INBOX") == [1]
    assert account.uids("INBOX") == [3]
    assert account.expunged_since("INBOX", before) == [1, 2]
    assert store.deliver(ADDR, MSG) == 4  # never reuses a UID


def test_copy_and_move_allocate_new_uids(store: MailStore) -> None:
    for _ in range(3):
        store.deliver(ADDR, MSG, flags=["\\Seen"])
    account = store.account(ADDR)
    validity, pairs = account.copy("INBOX", [1, 3], "Archive")
    assert validity == account.folder("Archive").uidvalidity
    assert pairs == [(1, 1), (3, 2)]
    assert account.read("Archive", 2) == MSG
    assert account.message("Archive", 1).flags == {"\\Seen"}
    _, pairs = account.move("INBOX", [2], "Archive")
    assert pairs == [(2, 3)]
    assert account.uids("INBOX") == [1, 3]
    assert account.uids("Archive") == [1, 2, 3]
    assert account.expunged_since("INBOX", 0) == [2]
    # the copy is independent of the original
    account.store_flags("INBOX", [1], ["\\Deleted"], "add")
    account.expunge("INBOX")
    assert account.read("Archive", 1) == MSG


def test_folder_create_rename_delete(store: MailStore) -> None:
    account = store.account(ADDR)
    account.create_folder("Work")
    account.create_folder("Work/2024/Q1")  # "Work/2024" is not created (IMAP lists it \\Noselect)
    names = [f.name for f in account.folders()]
    assert {"Work", "Work/2024/Q1"} <= set(names) and "Work/2024" not in names
    with pytest.raises(FolderExists):
        account.create_folder("Work")
    with pytest.raises(InvalidFolderName):
        account.create_folder("a//b")
    store.deliver(ADDR, MSG, folder="Work/2024/Q1")
    old_validity = account.folder("Work").uidvalidity
    store.deliver(ADDR, MSG, folder="Work")
    account.rename_folder("Work", "Job")
    names = {f.name for f in account.folders()}
    assert {"Job", "Job/2024/Q1"} <= names and "Work" not in names
    assert account.read("Job/2024/Q1", 1) == MSG
    assert account.folder("Job").uidvalidity == old_validity  # UIDs stay valid across a rename
    account.delete_folder("Job")  # has children: its messages go, the name stays (RFC 3501 §6.3.4)
    assert account.status("Job").messages == 0
    account.rename_folder("Job/2024", "Old")  # a parent that exists only through its child
    assert account.read("Old/Q1", 1) == MSG
    account.rename_folder("Old", "Job/2024")
    account.delete_folder("Job/2024/Q1")
    with pytest.raises(FolderNotFound):
        account.status("Job/2024/Q1")
    account.create_folder("Job/2024/Q1")
    assert account.status("Job/2024/Q1").messages == 0
    with pytest.raises(InvalidFolderName):
        account.delete_folder("inbox")


def test_folder_names_with_dots_and_unicode_do_not_collide(store: MailStore) -> None:
    account = store.account(ADDR)
    account.create_folder("a.b")
    account.create_folder("a/b")
    account.create_folder("Entwürfe")
    store.deliver(ADDR, MSG, folder="a.b")
    assert account.status("a.b").messages == 1
    assert account.status("a/b").messages == 0


def test_rename_inbox_moves_messages(store: MailStore) -> None:
    store.deliver(ADDR, MSG)
    store.deliver(ADDR, MSG)
    account = store.account(ADDR)
    account.rename_folder("INBOX", "Old")
    assert account.uids("Old") == [1, 2]
    assert account.uids("INBOX") == []
    assert store.deliver(ADDR, MSG) == 3


def test_recent_is_claimed_once(store: MailStore) -> None:
    store.deliver(ADDR, MSG)
    account = store.account(ADDR)
    assert account.claim_recent("INBOX") == {1}
    assert account.claim_recent("INBOX") == set()
    assert account.status("INBOX").recent == 0


def test_change_notification(store: MailStore) -> None:
    seen: list[str] = []
    unsubscribe = store.subscribe(ADDR, seen.append)
    store.deliver(ADDR, MSG)
    store.account(ADDR).store_flags("INBOX", [1], ["\\Seen"], "add")
    store.account(ADDR).copy("INBOX", [1], "Trash")
    unsubscribe()
    store.deliver(ADDR, MSG)
    assert seen == ["INBOX", "INBOX", "Trash"]


def test_exclusive_lock_is_exclusive(store: MailStore) -> None:
    account = store.account(ADDR)
    with account.exclusive_lock("pop3"):
        with pytest.raises(MailboxLocked):
            with account.exclusive_lock("pop3"):
                pass
    with account.exclusive_lock("pop3"):
        pass


def test_recovery_adopts_orphans_and_finishes_unlinks(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "mail")
    store.deliver(ADDR, MSG)
    store.deliver(ADDR, MSG)
    account = store.account(ADDR)
    base = account.path
    gone = account.message("INBOX", 2).path
    store.close()
    # a crash after rename, before COMMIT: a file in cur/ that has no row
    (base / "cur" / "1700000000.orphan.host:2,S").write_bytes(b"Subject: orphan\r\n\r\nx\r\n")
    # a crash after an expunge's COMMIT, before the unlink
    import sqlite3

    db = sqlite3.connect(base / "mailfleet.sqlite")
    rel = str(gone.relative_to(base))
    db.execute("DELETE FROM messages WHERE filename = ?", (rel,))
    db.execute("INSERT INTO pending_unlink VALUES(?)", (rel,))
    db.commit()
    db.close()
    # an old half-written tmp file
    stale = base / "tmp" / "stale"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = base / "tmp" / "fresh"
    fresh.write_bytes(b"being written by another process")

    store = MailStore(tmp_path / "mail")
    account = store.account(ADDR)
    infos = account.messages("INBOX")
    assert [i.uid for i in infos] == [1, 3]  # UID 2 is not reused
    assert infos[1].path.read_bytes() == b"Subject: orphan\r\n\r\nx\r\n"
    assert infos[1].flags == {"\\Seen"}
    assert not gone.exists()
    assert not stale.exists() and fresh.exists()
    assert all(i.path.exists() for i in infos)
    store.close()


def test_recovery_finishes_a_delivery_whose_rename_was_not_flushed(tmp_path: Path) -> None:
    """Deliveries commit the row, then flush: a crash in between can leave the row durable and the rename not
    (the file, flushed before the rename, is back in tmp/). The next open moves it into place; a row whose file
    is nowhere is dropped and reported as expunged, so no client is shown a message that cannot be read."""
    store = MailStore(tmp_path / "mail")
    for n in range(3):
        store.deliver(ADDR, MSG + str(n).encode())
    account = store.account(ADDR)
    base = account.path
    modseq = account.status("INBOX").highestmodseq
    second, third = account.message("INBOX", 2).path, account.message("INBOX", 3).path
    store.close()
    second.rename(base / "tmp" / second.name.rpartition(":2,")[0])
    os.utime(base / "tmp" / second.name.rpartition(":2,")[0], (time.time() - 7200, time.time() - 7200))
    third.unlink()

    store = MailStore(tmp_path / "mail")
    account = store.account(ADDR)
    assert [i.uid for i in account.messages("INBOX")] == [1, 2]  # the same UID, the file back in cur/
    assert account.message("INBOX", 2).path.read_bytes() == MSG + b"1"
    assert account.expunged_since("INBOX", modseq) == [3]
    assert account.quota()[0] == len(MSG + b"0") + len(MSG + b"1")
    assert not any((base / "tmp").iterdir())
    store.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_staged_delivery_has_no_name_until_its_commit(store: MailStore) -> None:
    """A message being written is an unnamed file: no reader, crash recovery or administrator sees it in
    cur/, new/ or tmp/ before its index transaction links it into cur/; one refused at that point (the quota
    was lowered meanwhile) leaves no file and no open descriptor behind."""
    from appliance.store.account import Delivery

    account = store.account(ADDR)
    base = account.path
    fds = _open_fds()
    batch = account.stage([Delivery("INBOX", MSG), Delivery("INBOX", MSG + b"more")])
    assert all(not list((base / sub).iterdir()) for sub in ("cur", "new", "tmp"))
    store.set_quota(ADDR, len(MSG) + 3)
    assert account.index(batch)
    results = account.settle(batch)
    assert results[0] == (account.status("INBOX").uidvalidity, 1)
    assert isinstance(results[1], QuotaExceeded)
    assert [p.read_bytes() for p in (base / "cur").iterdir()] == [MSG]
    assert not list((base / "tmp").iterdir()) and not list((base / "new").iterdir())
    assert _open_fds() == fds


def test_without_unnamed_files_deliveries_go_through_tmp(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc is missing (a chroot), linking an unnamed file is impossible: the store says so once to
    itself and writes to tmp/, renamed into cur/ at the commit, as Maildir always did."""
    from appliance.store import maildir
    from appliance.store.account import Delivery

    def no_proc() -> int:
        raise FileNotFoundError(2, "No such file or directory", "/proc/self/fd")

    monkeypatch.setattr(maildir, "_unnamed_files", True)
    monkeypatch.setattr(maildir, "_proc_fd_dir", no_proc)
    account = store.account(ADDR)
    batch = account.stage([Delivery("INBOX", MSG)])
    assert [p.read_bytes() for p in (account.path / "tmp").iterdir()] == [MSG]
    assert account.index(batch)
    assert isinstance(account.settle(batch)[0], tuple)
    assert maildir._unnamed_files is False
    assert store.deliver(ADDR, MSG + b"2") == 2
    assert [i.path.read_bytes() for i in account.messages("INBOX")] == [MSG, MSG + b"2"]
    assert not list((account.path / "tmp").iterdir())


def test_power_loss_before_the_flush_of_a_link_drops_the_row(tmp_path: Path) -> None:
    """An unnamed file linked into cur/ by a commit that was not flushed yet may have no name at all after a
    power loss: the next open drops its row (recorded as expunged; the sender was never told "stored")."""
    from appliance.store.account import Delivery

    store = MailStore(tmp_path / "mail")
    store.deliver(ADDR, MSG)
    account = store.account(ADDR)
    modseq = account.status("INBOX").highestmodseq
    batch = account.stage([Delivery("INBOX", MSG + b"lost"), Delivery("INBOX", MSG + b"kept")])
    assert account.index(batch)
    paths = [account.message("INBOX", uid).path for _, (_, uid) in batch.indexed]
    store.close()
    paths[0].unlink()  # the link never reached the disk

    store = MailStore(tmp_path / "mail")
    account = store.account(ADDR)
    assert [(i.uid, i.path.read_bytes()) for i in account.messages("INBOX")] == [(1, MSG), (3, MSG + b"kept")]
    assert account.expunged_since("INBOX", modseq) == [2]
    assert account.quota()[0] == len(MSG) * 2 + 4
    store.close()


def test_power_loss_before_a_deliverys_flush_drops_only_what_did_not_reach_the_disk(tmp_path: Path) -> None:
    """A delivery renames and indexes its files, commits without a flush, then flushes once and only then
    reports "stored". A power loss before that flush can leave a row whose file is short, empty or still in
    tmp/, and files without rows. The next open keeps what is complete and drops the rest (as expunged), and
    messages stored before are untouched."""
    from appliance.store.account import Delivery

    store = MailStore(tmp_path / "mail")
    store.deliver(ADDR, MSG)  # reported stored: must survive whatever follows
    account = store.account(ADDR)
    base = account.path
    modseq = account.status("INBOX").highestmodseq
    bodies = [MSG + b"x" * 100 + str(n).encode() for n in range(4)]
    batch = account.stage([Delivery("INBOX", body) for body in bodies])
    assert account.index(batch)  # committed, not flushed: the crash comes now
    paths = [account.message("INBOX", uid).path for _, (_, uid) in batch.indexed]
    store.close()
    # what the disk may hold after the power loss:
    paths[0].write_bytes(bodies[0][:20])  # 2: the data only partly written
    paths[1].write_bytes(b"")  # 3: no data at all
    paths[2].rename(base / "tmp" / paths[2].name.rpartition(":2,")[0])  # 4: complete, the rename lost
    # 5 (paths[3]) made it entirely
    orphan = base / "cur" / f"{paths[3].name.split(',')[0]}x,S=500:2,"
    orphan.write_bytes(b"Subject: cut short\r\n")  # a file of a batch whose commit was lost, cut short

    store = MailStore(tmp_path / "mail")
    account = store.account(ADDR)
    infos = account.messages("INBOX")
    assert [i.uid for i in infos] == [1, 4, 5]
    assert [i.path.read_bytes() for i in infos] == [MSG, bodies[2], bodies[3]]
    assert account.expunged_since("INBOX", modseq) == [2, 3]
    assert account.quota()[0] == len(MSG) + len(bodies[2]) + len(bodies[3])
    assert not orphan.exists()
    store.close()
    store = MailStore(tmp_path / "mail")  # and a second open changes nothing more
    assert [i.uid for i in store.account(ADDR).messages("INBOX")] == [1, 4, 5]
    store.close()


def test_opening_a_mailbox_during_another_writers_flush_drops_nothing(tmp_path: Path) -> None:
    """The open-time check must not mistake a delivery that another process has committed and is flushing
    right now for a crashed one; and the list of unflushed rows stays short in normal operation."""
    import sqlite3

    from appliance.store.account import Delivery

    writer = MailStore(tmp_path / "mail")
    for n in range(20):
        writer.deliver(ADDR, MSG + str(n).encode())
    account = writer.account(ADDR)
    batch = account.stage([Delivery("INBOX", MSG + b"in flight")])
    assert account.index(batch)
    db = sqlite3.connect(account.path / "mailfleet.sqlite")
    assert db.execute("SELECT COUNT(*) FROM unflushed").fetchone()[0] <= 2  # the last batches only
    db.close()

    reader = MailStore(tmp_path / "mail")  # another process opening the mailbox now
    assert len(reader.account(ADDR).messages("INBOX")) == 21
    assert account.settle(batch)[0][1] == 21
    reader.close()
    writer.close()


def test_deliveries_from_an_event_loop_share_commits_and_all_land(store: MailStore) -> None:
    """MailStore.deliver_async: what one turn of the loop submits goes into one batch; every future gets its
    own UID, and every message is in the mailbox, readable, once its future is done."""
    import asyncio

    async def run() -> list[tuple[int, int]]:
        first = await store.deliver_async(ADDR, MSG + b"first")  # opens the account off the loop
        rest = await asyncio.gather(*(store.deliver_async(ADDR, MSG + str(n).encode()) for n in range(200)))
        return [first, *rest]

    results = asyncio.run(run())
    uids = [uid for _, uid in results]
    assert sorted(uids) == list(range(1, 202))
    infos = {i.uid: i for i in store.account(ADDR).messages("INBOX")}
    assert infos[uids[0]].path.read_bytes() == MSG + b"first"
    assert all(infos[uid].path.read_bytes() == MSG + str(n).encode() for n, uid in enumerate(uids[1:]))


class _Ticker:
    """A timer task on the running loop, counting its 10 ms ticks: proof that the loop is not blocked."""

    def __init__(self) -> None:
        self.ticks = 0

    async def _run(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(0.01)  # the tick itself: a timer that fires only while the loop is free
            self.ticks += 1

    async def __aenter__(self) -> _Ticker:
        import asyncio

        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


def test_a_delivery_waits_for_a_busy_mailbox_without_blocking_the_loop(store: MailStore) -> None:
    """A long IMAP command holds the account in another thread: a delivery from the event loop then waits in
    a thread, while the loop keeps serving (here: a timer that must keep ticking)."""
    import asyncio

    account = store.account(ADDR)
    store.deliver(ADDR, MSG)

    async def run() -> tuple[int, int]:
        await store.deliver_async(ADDR, MSG)  # the batcher exists now; the next one meets the busy account
        held = threading.Event()
        release = threading.Event()

        def long_command() -> None:
            with account._lock:  # what a long FETCH or SEARCH holds
                held.set()
                release.wait(10)

        holder = threading.Thread(target=long_command)
        holder.start()
        held.wait(5)
        async with _Ticker() as ticker:
            delivery = store.deliver_async(ADDR, MSG + b"late")
            await wait_until_async(lambda: ticker.ticks >= 10, 10, "ten ticks of the loop during the delivery")
            assert not delivery.done() and ticker.ticks >= 10  # waiting, and the loop is not
            release.set()
            result = await asyncio.wait_for(delivery, 10)
        holder.join()
        return result

    _, uid = asyncio.run(run())
    assert account.message("INBOX", uid).path.read_bytes() == MSG + b"late"


def test_a_delivery_waits_for_another_process_holding_the_mailbox(store: MailStore) -> None:
    """Another process (here: another open file description of write.lock, which flock treats the same way)
    holds the mailbox's write lock, briefly and then for long: the delivery from the event loop waits for it
    both times, is stored once it is free, and the loop keeps serving meanwhile."""
    import asyncio
    import fcntl

    account = store.account(ADDR)
    store.deliver(ADDR, MSG)

    def hold(seconds: float) -> int:
        fd = os.open(account.path / "write.lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        threading.Timer(seconds, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd))).start()
        return fd

    async def run() -> list[tuple[int, int]]:
        await store.deliver_async(ADDR, MSG)
        results = []
        async with _Ticker() as ticker:
            for seconds in (0.005, 0.5):  # within the loop's polling, and long enough to go to a thread
                hold(seconds)
                started = time.monotonic()
                results.append(await asyncio.wait_for(store.deliver_async(ADDR, MSG + f"{seconds}".encode()), 10))
                assert time.monotonic() - started >= seconds
            assert ticker.ticks >= 40  # the half-second wait did not stop the loop
        return results

    for (_, uid), text in zip(asyncio.run(run()), (b"0.005", b"0.5"), strict=True):
        assert account.message("INBOX", uid).path.read_bytes() == MSG + text


def test_concurrent_deliveries_from_threads(store: MailStore) -> None:
    errors: list[BaseException] = []
    uids: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(25):
                uid = store.deliver(ADDR, MSG + f"{n}-{i}".encode())
                with lock:
                    uids.append(uid)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    _in_threads(worker, 8)
    assert not errors
    assert sorted(uids) == list(range(1, 201))
    assert len(store.account(ADDR).messages("INBOX")) == 200


DELIVER_LOOP = """
import sys
from pathlib import Path
from appliance.store import MailStore
store = MailStore(Path(sys.argv[1]))
n = int(sys.argv[2])
i = 0
while n == 0 or i < n:
    uid = store.deliver("bob@example.org", b"Subject: p\\r\\n\\r\\n" + str(i).encode() + b"\\r\\n")
    print(uid, flush=True)
    i += 1
"""


def test_concurrent_deliveries_from_processes(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    MailStore(root).account(ADDR)
    procs = [subprocess.Popen([sys.executable, "-c", DELIVER_LOOP, str(root), "40"], stdout=subprocess.PIPE)
             for _ in range(3)]
    uids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        uids += [int(x) for x in out.split()]
    assert sorted(uids) == list(range(1, 121))
    store = MailStore(root)
    assert store.account(ADDR).uids("INBOX") == list(range(1, 121))
    store.close()


def test_kill_9_during_deliveries_leaves_a_consistent_store(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    MailStore(root).account(ADDR)
    proc = subprocess.Popen([sys.executable, "-c", DELIVER_LOOP, str(root), "0"], stdout=subprocess.PIPE)
    acknowledged = []
    assert proc.stdout is not None
    while len(acknowledged) < 150:
        acknowledged.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = MailStore(root)
    account = store.account(ADDR)
    infos = account.messages("INBOX")
    uids = [i.uid for i in infos]
    assert set(acknowledged) <= set(uids)  # every acknowledged delivery survived
    assert all(i.path.exists() and i.path.stat().st_size == i.size for i in infos)
    on_disk = {p.name for p in (account.path / "cur").iterdir()}
    assert on_disk == {i.path.name for i in infos}  # no orphan left behind
    assert store.deliver(ADDR, MSG) > max(uids)
    store.close()


def test_internal_date_defaults_to_now(store: MailStore) -> None:
    uid = store.deliver(ADDR, MSG)
    when = store.account(ADDR).message("INBOX", uid).internal_date
    assert abs((datetime.now(UTC) - when).total_seconds()) < 60
