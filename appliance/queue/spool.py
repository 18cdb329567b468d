"""The durable spool: one file per message plus an append-only state log per message.

Durability point: `Spool.commit()` returns (and SMTP answers 250) only after the message file is complete,
renamed into `msg/` and flushed to disk by a group commit: one syncfs(2) for every message accepted while the
previous flush was running, so parallel sessions share the cost of the disk flush instead of queueing on it
(the process's GroupFlush, shared with the mailbox store's deliveries on the same filesystem).

File format of `msg/<id>`: b"MFQ1 <envelope length> <data length> <crc32>\n" + envelope JSON + b"\n" + message
bytes (a header of three fields, without the CRC-32, is read too and not checked). The lengths and the CRC-32 of
envelope and data make a torn file (power loss before the flush) recognisable, also one whose blocks still hold
an older file's bytes, and one damaged later (bit rot, a bad disk). Such a file is never delivered: at start-up
it is set aside in `corrupt/`, and its sender is told when its envelope is still readable (see `Spool.messages`).

On ext4 without a journal the spool reuses its files (see `creation_skips_deleted_inodes`): a delivered
message's file goes to `free/`, and the next message is written over it instead of into a new file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.durable.files import write_all
from appliance.durable.flush import GroupFlush, flusher_for
from appliance.message.model import QueuedMessage, Recipient, SpoolCorrupt

log = logging.getLogger("appliance.queue")

MAGIC = b"MFQ1"

FREE_LIMIT = 256  # emptied spool files kept for reuse
FREE_MAX_SIZE = 1 << 20  # a larger file is unlinked: its blocks are not worth holding for a typical message
FREE_RELIST = 64  # after finding free/ empty, writes that do not look again

def _writev_all(fd: int, head: bytes, data: bytes) -> None:
    """Both buffers with one writev(2); the rest of a short write (a huge message) after it."""
    written = os.writev(fd, [head, data])
    if written < len(head) + len(data):
        write_all(fd, memoryview(head + data)[written:])


def creation_skips_deleted_inodes(path: Path, sys_root: str = "/sys") -> bool:
    """True when ``path`` lies on ext4 without a journal, where creating a file is slow under mail flow.

    There, allocating an inode passes over every inode of the block group freed in the last minute (six while
    its inode table block is not written back; Linux fs/ext4/ialloc.c, ``recently_deleted()``, RECENTCY_MIN and
    RECENTCY_DIRTY, checked only when there is no journal), reading each one: after
    a few thousand deletions a new file costs 0.6-1 ms of system time instead of 25 us (measured on the 2-core
    bench machine). The kernel names the journal's thread in /sys/fs/ext4/<device>/journal_task, "<none>"
    without one. Anything else (another filesystem, overlayfs in a container, no sysfs) is False.
    """
    try:
        device = os.stat(path).st_dev
        name = os.path.basename(os.path.realpath(f"{sys_root}/dev/block/{os.major(device)}:{os.minor(device)}"))
        with open(f"{sys_root}/fs/ext4/{name}/journal_task") as fh:
            return fh.read().strip() == "<none>"
    except OSError:
        return False


class _Reaper:
    """Unlinks finished spool files in order, off the event loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Path, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spool-reaper", daemon=True)
        self._thread.start()

    def put(self, *paths: Path) -> None:
        self._queue.put(paths)

    def _run(self) -> None:
        while (paths := self._queue.get()) is not None:
            for path in paths:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # pragma: no cover - disk failure
                    log.warning("spool: cannot remove %s: %s", path, exc)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)


class Spool:
    """The on-disk queue under `root` (data_dir/spool): tmp/, msg/, state/, corrupt/, free/.

    `reuse`: keep delivered messages' files in free/ and write new messages over them; by default only where
    creating files is slow (`creation_skips_deleted_inodes`). Elsewhere a reused file costs more than a new
    one (overwriting blocks, shrinking the file): on a journaled ext4, relaying 1 KB messages took 12% more CPU.
    """

    def __init__(self, root: Path, reuse: bool | None = None) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.msg_dir = root / "msg"
        self.state_dir = root / "state"
        self.corrupt_dir = root / "corrupt"
        self.free_dir = root / "free"
        for d in (self.tmp_dir, self.msg_dir, self.state_dir, self.corrupt_dir, self.free_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.reuse = creation_skips_deleted_inodes(root) if reuse is None else reuse
        self._tmp_prefix = f"{self.tmp_dir}/"
        self._msg_prefix = f"{self.msg_dir}/"
        self._state_prefix = f"{self.state_dir}/"
        self._free_prefix = f"{self.free_dir}/"
        self._free_names: list[str] = []  # free/ as last listed, for taking files (acceptors)
        self._free_skip = 0
        self._free_room = 0  # files that may still go to free/ before it is counted again (queue process)
        self._free_recount = 0
        self._flusher: GroupFlush | None = None
        self._reaper: _Reaper | None = None

    # ------------------------------------------------------------------ accepting

    async def commit(self, message: QueuedMessage, data: bytes) -> bytes:
        """Write the message and return once it is on disk: the durability point behind every 250 reply.
        Returns the envelope as written (for the notice to the queue process)."""
        envelope = self.write(message, data)
        if self._flusher is None:
            self._flusher = flusher_for(self.msg_dir)
        await self._flusher.request()
        return envelope

    def write(self, message: QueuedMessage, data: bytes) -> bytes:
        """Write completely under tmp/, then rename into msg/: a reader never sees a partial message."""
        envelope = message.envelope_json()
        crc = zlib.crc32(data, zlib.crc32(envelope))
        head = b"%s %d %d %08x\n%s\n" % (MAGIC, len(envelope), len(data), crc, envelope)
        tmp = self._tmp_prefix + message.queue_id
        final = self._msg_prefix + message.queue_id
        reused = self.reuse and self._take_free(tmp)
        try:
            # A reused file is written over, not truncated first: freeing its blocks to allocate them again
            # costs more than the new file it replaces. Only a longer old file is cut to size after the write.
            fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC | (0 if reused else os.O_CREAT | os.O_TRUNC), 0o640)
            try:
                _writev_all(fd, head, data)
                total = len(head) + len(data)
                if reused and os.fstat(fd).st_size > total:
                    os.ftruncate(fd, total)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            # A refused attempt (disk full, say) must not keep its blocks and inode until the next start: on a
            # full disk every retry of the client would leave one more.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        message.path = Path(final)
        message.size = len(data)
        message.data_offset = len(head)
        return envelope

    def _take_free(self, tmp: str) -> bool:
        """Move an emptied file from free/ to ``tmp``; False when there is none. The rename is the claim: of two
        acceptors reaching for one file, the second finds it gone and takes the next."""
        if not self._free_names:
            if self._free_skip:
                self._free_skip -= 1
                return False
            names = self._list_free()
            if names is None:
                return False
            self._free_names = names
            if not names:
                self._free_skip = FREE_RELIST
                return False
        while self._free_names:
            try:
                os.rename(self._free_prefix + self._free_names.pop(), tmp)
                return True
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._stop_reuse(exc)
                return False
        return False

    def _release(self, queue_id: str) -> None:
        """A delivered message's file: into free/ for the next message while there is room, else unlinked."""
        path = self._msg_prefix + queue_id
        try:
            if os.stat(path).st_size <= FREE_MAX_SIZE and self._free_has_room():
                try:
                    os.rename(path, self._free_prefix + queue_id)
                    self._free_skip = 0  # where this process also writes (one process for all), it looks again
                    return
                except FileNotFoundError:
                    pass  # free/ itself gone: the unlink below (the file gone too: nothing to do)
                except OSError as exc:
                    self._stop_reuse(exc)
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _list_free(self) -> list[str] | None:
        """The names in free/; None, with reuse turned off, when it cannot be read."""
        try:
            return os.listdir(self.free_dir)
        except OSError as exc:
            self._stop_reuse(exc)
            return None

    def _stop_reuse(self, exc: OSError) -> None:
        """free/ unusable (say, created by root running the CLI before the service's first start): the files are
        unlinked as elsewhere, and the delivery that noticed goes on."""
        log.warning("spool: %s: %s; spool files are no longer reused", self.free_dir, exc.strerror or exc)
        self.reuse = False
        self._free_names = []

    def _free_has_room(self) -> bool:
        """Whether free/ holds fewer than FREE_LIMIT files, counted again only now and then (the acceptors take
        files out of it meanwhile, so a count can only overestimate)."""
        if self._free_room <= 0:
            if self._free_recount > 0:
                self._free_recount -= 1
                return False
            names = self._list_free()
            if names is None:
                return False
            self._free_room = FREE_LIMIT - len(names)
            self._free_recount = FREE_RELIST
            if self._free_room <= 0:
                return False
        self._free_room -= 1
        return True

    # ------------------------------------------------------------------ state

    def record(self, message: QueuedMessage, recipients: list[Recipient]) -> None:
        """Append the new state of some recipients to the message's state log.

        Not fsynced: a process crash keeps the page cache, and losing a 'delivered' line to a power cut costs
        a duplicate delivery, never a lost message.
        """
        lines = b"".join(json.dumps({
            "rcpt": r.address, "status": r.status, "attempts": r.attempts, "next": r.next_attempt,
            "code": r.last_code, "text": r.last_text, "host": r.remote_host,
        }, separators=(",", ":")).encode() + b"\n" for r in recipients)
        fd = os.open(self.state_dir / message.queue_id, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, lines)  # one write(2) of whole lines: a crash leaves at most a torn last line
        finally:
            os.close(fd)

    def remove(self, queue_id: str) -> None:
        """Forget a message whose every recipient reached a final state.

        The unlinks run on a background thread: under delivery load ext4 makes an unlink wait for the journal,
        and the event loop must not. One lost to a crash is harmless: at start-up a message whose recipients
        are all final is removed again.
        """
        if self._reaper is None:
            self._reaper = _Reaper()
        self._reaper.put(self.msg_dir / queue_id, self.state_dir / queue_id)

    def remove_now(self, queue_id: str, reuse: bool = False) -> None:
        """Forget a message here and now: for the administrator's delete, and for a message delivered to every
        recipient at its first attempt, whose state line would otherwise be created only to be unlinked a
        moment later (on the loop, one unlink costs less than that file and the reaper's thread: relaying
        1 KB messages took 12% less CPU per message). ``reuse``: the file may serve the next message (never
        for a message the administrator deleted: its bytes must not stay in free/)."""
        if reuse and self.reuse:
            self._release(queue_id)
        else:
            with contextlib.suppress(FileNotFoundError):  # strings: pathlib costs more than unlink(2)
                os.unlink(self._msg_prefix + queue_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_prefix + queue_id)

    # ------------------------------------------------------------------ reading back

    def load(self, queue_id: str, verify: bool = False) -> QueuedMessage:
        """The message and its delivery state. ``verify``: also read the data and check the CRC (start-up)."""
        return self._load(self.msg_dir / queue_id, queue_id, verify)

    def _load(self, path: Path, queue_id: str, verify: bool) -> QueuedMessage:
        damage = None
        with open(path, "rb") as fh:
            header = fh.readline(80)
            parts = header.split()
            if (len(parts) not in (3, 4) or parts[0] != MAGIC or not parts[1].isdigit() or not parts[2].isdigit()
                    or (len(parts) == 4 and len(parts[3]) != 8)):
                raise SpoolCorrupt(f"{path}: not a spool file (bad header)", queue_id)
            env_len, data_len = int(parts[1]), int(parts[2])
            envelope_raw = fh.read(env_len + 1)
            if len(envelope_raw) != env_len + 1:
                raise SpoolCorrupt(f"{path}: truncated envelope", queue_id)
            total = os.fstat(fh.fileno()).st_size
            offset = len(header) + env_len + 1
            if total != offset + data_len:
                damage = f"{path}: message is {total - offset} bytes, header says {data_len}"
            elif verify and len(parts) == 4:
                try:
                    crc = int(parts[3], 16)
                except ValueError:
                    raise SpoolCorrupt(f"{path}: not a spool file (bad header)", queue_id) from None
                if zlib.crc32(fh.read(data_len), zlib.crc32(envelope_raw[:-1])) != crc:
                    damage = f"{path}: content does not match its checksum (torn write)"
        if damage is not None:
            raise SpoolCorrupt(damage, queue_id, self._envelope_of_damaged(queue_id, envelope_raw, offset, data_len))
        message = self.from_envelope(queue_id, envelope_raw, offset, data_len)
        if message.queue_id != queue_id:
            raise SpoolCorrupt(f"{path}: the envelope names message {message.queue_id}", queue_id)
        self._replay_state(message)
        return message

    def _envelope_of_damaged(self, queue_id: str, envelope: bytes, data_offset: int,
                             size: int) -> QueuedMessage | None:
        """What a damaged file still tells of its message: the envelope, when it parses, ends where its header
        says and names this very file (bytes of an older message in a reused file name another), with the
        recipients' states from the state log. None otherwise."""
        if not envelope.endswith(b"\n"):
            return None
        try:
            message = self.from_envelope(queue_id, envelope, data_offset, size)
        except SpoolCorrupt:
            return None
        if message.queue_id != queue_id:
            return None
        self._replay_state(message)
        return message

    def from_envelope(self, queue_id: str, envelope: bytes, data_offset: int, size: int) -> QueuedMessage:
        """The message whose envelope (JSON, as in its spool file) and data position are known: what an
        acceptor's notice carries for a message it has just committed (which has no state log yet)."""
        path = self.msg_dir / queue_id
        try:
            env = json.loads(envelope)
            rcpts = [Recipient(address=a, original=o) for a, o in env["rcpts"]]
            return QueuedMessage(
                queue_id=env["id"], mail_from=env["from"], recipients=rcpts, arrival=env["arrival"],
                client=env.get("client", ""), helo=env.get("helo", ""), smtputf8=env.get("smtputf8", False),
                size=size, path=path, data_offset=data_offset, meta=env.get("meta", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolCorrupt(f"{path}: unreadable envelope ({exc})", queue_id) from None

    def _replay_state(self, message: QueuedMessage) -> None:
        by_addr = {r.address: r for r in message.recipients}
        try:
            raw = (self.state_dir / message.queue_id).read_bytes()
        except FileNotFoundError:
            return
        for line in raw.splitlines():
            try:
                entry = json.loads(line)
                rcpt = by_addr[entry["rcpt"]]
            except (ValueError, KeyError):
                continue  # a torn last line from a crash mid-append; the earlier state stands
            rcpt.status = entry["status"]
            rcpt.attempts = entry["attempts"]
            rcpt.next_attempt = entry["next"]
            rcpt.last_code = entry.get("code", 0)
            rcpt.last_text = entry.get("text", "")
            rcpt.remote_host = entry.get("host", "")

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.msg_dir.iterdir() if not p.name.startswith("."))

    def scan(self, verify: bool = False) -> Iterator[QueuedMessage | SpoolCorrupt]:
        """Every message file in msg/: the message, or why it cannot be read. A file delivered (and removed, or
        given to the next message) while it was read is skipped: no damage, nothing to report."""
        for queue_id in self.ids():
            try:
                item: QueuedMessage | SpoolCorrupt = self.load(queue_id, verify)
            except FileNotFoundError:
                continue  # delivered and removed while we listed
            except SpoolCorrupt as exc:
                if not os.path.exists(self._msg_prefix + queue_id):
                    continue  # delivered while we read it (its file may already carry the next message)
                exc.queue_id = exc.queue_id or queue_id
                item = exc
            yield item

    def messages(self, verify: bool = False,
                 on_damaged: Callable[[SpoolCorrupt], None] | None = None) -> Iterator[QueuedMessage]:
        """Every readable message (start-up). A damaged file is logged as an error, handed to ``on_damaged`` (the
        queue tells the sender), then set aside in corrupt/, never delivered. ``verify``: check each message's
        CRC too, after a possible power loss.

        A damaged file is either a message torn by a power loss before its flush (never answered 250) or one
        whose blocks were damaged later (bit rot, a bad disk: answered 250, and lost). The two look alike; the
        sender of the first is told of a message it sends again, the sender of the second would otherwise
        never hear of it."""
        for item in self.scan(verify):
            if isinstance(item, QueuedMessage):
                yield item
            else:
                self.discard_damaged(item, on_damaged)

    def discard_damaged(self, damaged: SpoolCorrupt, on_damaged: Callable[[SpoolCorrupt], None] | None) -> None:
        """One damaged file, found at start-up or later: logged as an error, handed to ``on_damaged``, set aside."""
        log.error("spool: %s; %s, setting it aside in %s", damaged,
                  "the envelope is readable" if damaged.message is not None else "its sender is unknown",
                  self.corrupt_dir)
        if on_damaged is not None:
            on_damaged(damaged)
        self.set_aside(damaged.queue_id)

    def set_aside(self, queue_id: str) -> bool:
        """Move a damaged message file to corrupt/ for the administrator; False when it is gone already."""
        if not queue_id or "/" in queue_id or queue_id.startswith("."):
            raise ValueError(f"not a spool file name: {queue_id!r}")
        try:
            os.replace(self.msg_dir / queue_id, self.corrupt_dir / queue_id)
        except FileNotFoundError:
            return False
        return True

    def damaged(self) -> list[SpoolCorrupt]:
        """The files set aside in corrupt/, each with what is wrong with it and what is left of its envelope."""
        found = []
        for name in sorted(os.listdir(self.corrupt_dir)):
            path = self.corrupt_dir / name
            try:
                self._load(path, name, verify=True)
            except SpoolCorrupt as exc:
                found.append(exc)
            except OSError as exc:
                found.append(SpoolCorrupt(f"{path}: unreadable ({exc.strerror or exc})", name))
            else:
                found.append(SpoolCorrupt(f"{path}: set aside (it reads as whole now)", name))
        return found

    def recover(self) -> int:
        """At start-up: drop tmp/ leftovers (never answered 250), state logs without a message, and what free/
        holds beyond its limit (all of it where files are not reused)."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        try:
            for path in sorted(self.free_dir.iterdir())[FREE_LIMIT if self.reuse else 0:]:
                path.unlink(missing_ok=True)
        except OSError as exc:
            self._stop_reuse(exc)
        known = set(self.ids())
        for path in self.state_dir.iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)
        return removed

    def close(self) -> None:
        self._flusher = None  # shared with the rest of the process (see appliance.durable.flush)
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
