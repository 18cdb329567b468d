"""The quarantine's files: one per held message, under data_dir/quarantine, with its envelope and verdict.

File format of ``msg/<queue id>``: b"MFH1 <envelope length> <data length> <crc32>\\n" + envelope JSON + b"\\n" +
message bytes, the layout of the spool's files (queue/spool.py) under a magic of its own, so that a file moved
by hand into the wrong directory is recognised as foreign. The envelope is ``QueuedMessage.envelope_json()``;
the verdict is the mapping a content check put in its meta under META_QUARANTINE. The lengths and the CRC-32 of
envelope and data make a torn or damaged file recognisable: it is listed as damaged, never released.

Durability point: ``put`` writes ``tmp/<id>``, fsyncs it, renames it into ``msg/`` and fsyncs ``msg/``; when it
returns (and only then does SMTP answer 250) the file and its name are on disk. A file of its own and an fsync
of its own rather than the spool's group flush: quarantined mail is the exception, and the put runs on a thread
beside the event loop. The names are queue IDs, unique across processes, so every acceptor writes here at once.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import os
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.durable.files import fsync_dir, write_all
from appliance.message.model import META_FOLDER, META_QUARANTINE, QueuedMessage, Recipient

MAGIC = b"MFH1"
_ID = re.compile(r"[0-9A-Za-z]{1,64}")  # queue IDs (message/model.py new_queue_id): never a path


class QuarantineError(Exception):
    """What the administrator is told, in one line: an ID that is not one, unknown, or a damaged file."""


class NotHeld(QuarantineError):
    """No message of that ID in the quarantine."""


class Damaged(QuarantineError):
    """A quarantine file that is not a whole message (torn write, damaged blocks, a foreign file)."""


def verdict_reason(verdict: object) -> str:
    """The verdict in a few words: its "reason" when the check gave one, else the verdict as compact JSON."""
    if not verdict:
        return "no verdict recorded"
    if isinstance(verdict, Mapping):
        reason = verdict.get("reason")
        if isinstance(reason, str) and reason:
            return reason
    return json.dumps(verdict, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of ``Quarantine.list()``. A damaged file has only its ID and ``damaged`` (what is wrong)."""

    queue_id: str
    arrival: float | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    verdict: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    size: int | None = None
    damaged: str | None = None

    @property
    def reason(self) -> str:
        return verdict_reason(self.verdict)


@dataclass(frozen=True, slots=True)
class Held:
    """A quarantined message, whole: its envelope (recipients, meta with the verdict) and its bytes."""

    message: QueuedMessage
    data: bytes

    @property
    def verdict(self) -> Mapping[str, Any]:
        verdict = self.message.meta.get(META_QUARANTINE)
        return verdict if isinstance(verdict, Mapping) else {}

    def released(self) -> QueuedMessage:
        """The envelope as the spool gets it on release: every recipient pending, the meta without the verdict
        and without the folder a check chose (the message is delivered as if the scan had passed)."""
        message = self.message
        return dataclasses.replace(
            message, recipients=[Recipient(address=r.address, original=r.original) for r in message.recipients],
            meta={k: v for k, v in message.meta.items() if k not in (META_QUARANTINE, META_FOLDER)},
            path=Path(), size=0, data_offset=0)


class Quarantine:
    """The held messages under ``root`` (config.quarantine_dir): ``msg/`` holds them, ``tmp/`` what is being
    written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.msg_dir = root / "msg"
        self.tmp_dir = root / "tmp"
        fresh = not self.msg_dir.is_dir()
        for directory in (self.msg_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        if fresh:  # the new directories' own names, so that the first put survives a power loss too
            fsync_dir(root)
            fsync_dir(root.parent)

    # ------------------------------------------------------------------ holding

    def put(self, message: QueuedMessage, data: bytes) -> None:
        """Hold ``message``: durable when this returns (see the module docstring). Raises OSError (disk full,
        failing) with nothing left behind: the client is answered 4xx and sends again."""
        queue_id = _checked(message.queue_id)
        envelope = message.envelope_json()
        crc = zlib.crc32(data, zlib.crc32(envelope))
        head = b"%s %d %d %08x\n%s\n" % (MAGIC, len(envelope), len(data), crc, envelope)
        tmp = self.tmp_dir / queue_id
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                write_all(fd, head)
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.msg_dir / queue_id)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(self.msg_dir)

    def recover(self) -> int:
        """At start-up, before any acceptor runs: drop what a crash left in tmp/ (never answered 250)."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    # ------------------------------------------------------------------ reading

    def ids(self) -> builtins.list[str]:
        return sorted(name for name in os.listdir(self.msg_dir) if not name.startswith("."))

    def list(self) -> builtins.list[Entry]:
        """Every held message, oldest first; a file that cannot be read or is not whole is an entry with
        ``damaged`` set, never an exception."""
        entries = []
        for name in self.ids():
            try:
                held = self.get(name)
            except NotHeld:
                continue  # released or deleted while we listed
            except QuarantineError as exc:
                entries.append(Entry(name, damaged=str(exc)))
                continue
            except OSError as exc:
                entries.append(Entry(name, damaged=f"{self.msg_dir / name}: unreadable ({exc.strerror or exc})"))
                continue
            message = held.message
            entries.append(Entry(name, message.arrival, message.mail_from,
                                 tuple(r.address for r in message.recipients), held.verdict, len(held.data)))
        return entries

    def get(self, queue_id: str) -> Held:
        """The message held under ``queue_id``, checked whole (lengths and CRC-32)."""
        path = self.msg_dir / _checked(queue_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise NotHeld(f"no message {queue_id} in the quarantine") from None
        return _parse(path, queue_id, raw)

    # ------------------------------------------------------------------ deciding

    def delete(self, queue_id: str) -> None:
        """Remove a held message for good (the administrator's decision; nobody is told)."""
        path = self.msg_dir / _checked(queue_id)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotHeld(f"no message {queue_id} in the quarantine") from None
        fsync_dir(self.msg_dir)

    async def release(self, queue_id: str,
                      into: Callable[[QueuedMessage, bytes], Awaitable[object]]) -> QueuedMessage:
        """Deliver a held message as if the scan had passed: ``into`` (the spool's commit, queue/) stores
        ``Held.released()`` durably, and only then is the quarantine file removed. Returns the envelope as
        stored. A damaged file is refused (``Damaged``): what it would deliver is not what arrived."""
        held = await asyncio.to_thread(self.get, queue_id)
        message = held.released()
        await into(message, held.data)
        # The spool holds the message on disk now. A crash before the unlink below leaves it in both places:
        # released again, it is delivered twice at worst, never lost.
        path = self.msg_dir / queue_id
        await asyncio.to_thread(_unlink_durably, path)
        return message


def _checked(queue_id: str) -> str:
    """A queue ID from the command line or a request, refused unless it is one (no path, no "..")."""
    if not isinstance(queue_id, str) or not _ID.fullmatch(queue_id):
        raise QuarantineError(f"{queue_id!r} is not a queue ID (letters and digits only)")
    return queue_id


def _unlink_durably(path: Path) -> None:
    path.unlink(missing_ok=True)  # the administrator may have deleted it meanwhile: it is gone either way
    fsync_dir(path.parent)


def _parse(path: Path, queue_id: str, raw: bytes) -> Held:
    head, newline, rest = raw.partition(b"\n")
    parts = head.split()
    if (not newline or len(parts) != 4 or parts[0] != MAGIC or not parts[1].isdigit() or not parts[2].isdigit()
            or len(parts[3]) != 8):
        raise Damaged(f"{path}: not a quarantine file (bad header)")
    env_len, data_len = int(parts[1]), int(parts[2])
    if len(rest) != env_len + 1 + data_len or rest[env_len:env_len + 1] != b"\n":
        raise Damaged(f"{path}: {len(rest)} bytes after the header, it says {env_len + 1 + data_len} (torn write)")
    envelope, data = rest[:env_len], rest[env_len + 1:]
    try:
        crc = int(parts[3], 16)
    except ValueError:
        raise Damaged(f"{path}: not a quarantine file (bad header)") from None
    if zlib.crc32(data, zlib.crc32(envelope)) != crc:
        raise Damaged(f"{path}: content does not match its checksum (damaged)")
    try:
        env = json.loads(envelope)
        meta = env.get("meta", {})
        if not isinstance(meta, dict):
            raise TypeError("meta is not a mapping")
        message = QueuedMessage(
            queue_id=env["id"], mail_from=env["from"], arrival=float(env["arrival"]),
            recipients=[Recipient(address=a, original=o) for a, o in env["rcpts"]], client=env.get("client", ""),
            helo=env.get("helo", ""), smtputf8=bool(env.get("smtputf8", False)), size=data_len, path=path,
            data_offset=len(head) + 1 + env_len + 1, meta=meta)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Damaged(f"{path}: unreadable envelope ({exc})") from None
    if message.queue_id != queue_id:
        raise Damaged(f"{path}: the envelope names message {message.queue_id}")
    return Held(message, data)
