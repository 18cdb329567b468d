"""The durable spool: one file per message plus an append-only state log per message.

Durability point: `Spool.commit()` returns (and SMTP answers 250) only after the message file is complete,
renamed into `msg/` and flushed to disk by a group commit: one syncfs(2) for every message accepted while the
previous flush was running, so parallel sessions share the cost of the disk flush instead of queueing on it
(the process's GroupFlush, shared with the mailbox store's deliveries on the same filesystem).

File format of `msg/<id>`: b"MFQ1 <envelope length> <data length>\n" + envelope JSON + b"\n" + message bytes.
The lengths make a torn file (power loss before the flush) recognisable; such a file was never answered 250
and is moved aside at start-up, never delivered half.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.store.flush import GroupFlush, flusher_for

log = logging.getLogger("appliance.queue")

MAGIC = b"MFQ1"

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


def new_queue_id() -> str:
    """Sortable by arrival (nanosecond clock in hex) and unique across processes (random suffix)."""
    return f"{time.time_ns():016x}{secrets.token_hex(3)}".upper()


@dataclass
class Recipient:
    """One envelope recipient and its delivery state."""

    address: str
    original: str = ""  # the address given at RCPT TO, before alias expansion (DSN Original-Recipient)
    status: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_code: int = 0
    last_text: str = ""
    remote_host: str = ""


@dataclass
class QueuedMessage:
    """Envelope and per-recipient state; the message bytes stay on disk until a delivery needs them."""

    queue_id: str
    mail_from: str
    recipients: list[Recipient]
    arrival: float
    client: str = ""
    helo: str = ""
    smtputf8: bool = False
    size: int = 0
    path: Path = Path()
    data_offset: int = 0
    meta: dict = field(default_factory=dict)

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == PENDING]

    def read_data(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size - self.data_offset if self.size <= 0 else self.size
            data = os.pread(fd, size, self.data_offset)  # one read(2), no buffered file object
            while len(data) < size:
                more = os.pread(fd, size - len(data), self.data_offset + len(data))
                if not more:
                    raise SpoolCorrupt(f"{self.path}: message is {len(data)} bytes, header says {size}")
                data += more
            return data
        finally:
            os.close(fd)

    def envelope_json(self) -> bytes:
        return json.dumps({
            "id": self.queue_id, "from": self.mail_from, "arrival": self.arrival, "client": self.client,
            "helo": self.helo, "smtputf8": self.smtputf8, "meta": self.meta,
            "rcpts": [[r.address, r.original] for r in self.recipients],
        }, separators=(",", ":")).encode()


class SpoolCorrupt(Exception):
    """A spool file that is not a complete message (torn write, foreign file)."""


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
    """The on-disk queue under `root` (data_dir/spool): tmp/, msg/, state/, corrupt/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.msg_dir = root / "msg"
        self.state_dir = root / "state"
        self.corrupt_dir = root / "corrupt"
        for d in (self.tmp_dir, self.msg_dir, self.state_dir, self.corrupt_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._msg_prefix = f"{self.msg_dir}/"
        self._state_prefix = f"{self.state_dir}/"
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
        header = b"%s %d %d\n" % (MAGIC, len(envelope), len(data))
        tmp = self.tmp_dir / message.queue_id
        final = self.msg_dir / message.queue_id
        with open(tmp, "wb") as fh:
            fh.write(header + envelope + b"\n")
            fh.write(data)
        os.rename(tmp, final)
        message.path = final
        message.size = len(data)
        message.data_offset = len(header) + len(envelope) + 1
        return envelope

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

    def remove_now(self, queue_id: str) -> None:
        """Forget a message here and now: for the administrator's delete, and for a message delivered to every
        recipient at its first attempt, whose state line would otherwise be created only to be unlinked a
        moment later (on the loop, one unlink costs less than that file and the reaper's thread: relaying
        1 KB messages took 12% less CPU per message)."""
        for directory in (self._msg_prefix, self._state_prefix):  # strings: pathlib costs more than unlink(2)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory + queue_id)

    # ------------------------------------------------------------------ reading back

    def load(self, queue_id: str) -> QueuedMessage:
        path = self.msg_dir / queue_id
        with open(path, "rb") as fh:
            header = fh.readline(64)
            parts = header.split()
            if len(parts) != 3 or parts[0] != MAGIC or not parts[1].isdigit() or not parts[2].isdigit():
                raise SpoolCorrupt(f"{path}: not a spool file (bad header)")
            env_len, data_len = int(parts[1]), int(parts[2])
            envelope_raw = fh.read(env_len + 1)
            if len(envelope_raw) != env_len + 1:
                raise SpoolCorrupt(f"{path}: truncated envelope")
            total = os.fstat(fh.fileno()).st_size
        offset = len(header) + env_len + 1
        if total != offset + data_len:
            raise SpoolCorrupt(f"{path}: message is {total - offset} bytes, header says {data_len}")
        message = self.from_envelope(queue_id, envelope_raw, offset, data_len)
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
            raise SpoolCorrupt(f"{path}: unreadable envelope ({exc})") from None

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

    def messages(self) -> Iterator[QueuedMessage]:
        """Every readable message; torn ones are moved to corrupt/ with a warning."""
        for queue_id in self.ids():
            try:
                yield self.load(queue_id)
            except FileNotFoundError:
                continue  # delivered and removed while we listed
            except SpoolCorrupt as exc:
                log.warning("spool: %s; moved to %s", exc, self.corrupt_dir)
                os.replace(self.msg_dir / queue_id, self.corrupt_dir / queue_id)

    def recover(self) -> int:
        """At start-up: drop tmp/ leftovers (never answered 250) and state logs without a message."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        known = set(self.ids())
        for path in self.state_dir.iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)
        return removed

    def close(self) -> None:
        self._flusher = None  # shared with the rest of the process (see appliance.store.flush)
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
