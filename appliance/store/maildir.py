"""Maildir files: unique names, durable writes and the folder directory layout (Maildir++).

The account directory is itself the INBOX Maildir (cur/, new/, tmp/); every other folder is a
Maildir++ sub-directory named "." + the folder name with "/" turned into "." (and "." / "%" escaped,
so that a folder called "a.b" cannot collide with "a/b").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
MAILDIR_SUBDIRS = ("cur", "new", "tmp")


def unique_name(size: int) -> str:
    """A Maildir unique name (time.MusecPpidQn.host,S=size) that no other delivery can produce."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{_HOST},S={size}"


def folder_dirname(name: str) -> str:
    """On-disk directory (relative to the account) for the folder ``name``; "" for INBOX."""
    if name.upper() == "INBOX":
        return ""
    escaped = name.replace("%", "%25").replace(".", "%2E").replace("/", ".")
    return "." + escaped


def _flush(path: Path, flags: int, flush: Callable[[int], None] = os.fsync) -> None:
    fd = os.open(path, flags)
    try:
        flush(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename/link/unlink in ``path`` durable (POSIX needs the directory itself synced)."""
    _flush(path, os.O_RDONLY | os.O_DIRECTORY)


def make_maildir(path: Path) -> None:
    """Create ``path`` with cur/new/tmp (idempotent) and sync the parents so they survive a crash."""
    created = False
    for sub in MAILDIR_SUBDIRS:
        target = path / sub
        if not target.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            created = True
    if created:
        fsync_dir(path)
        fsync_dir(path.parent)


def _load_syncfs():  # noqa: ANN202 - ctypes function or None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        return None


_SYNCFS = _load_syncfs()


def sync_filesystem(fd: int) -> None:
    """Flush everything written to the filesystem holding the open file ``fd``: one syncfs(2), which costs
    about one fsync however many files it covers (os.sync(), every filesystem, where syncfs is missing)."""
    if _SYNCFS is not None and _SYNCFS(fd) == 0:
        return
    os.sync()


def sync_path(path: Path) -> None:
    """Flush the whole filesystem holding ``path`` (file data, directory entries, other files' writes)."""
    _flush(path, os.O_RDONLY, sync_filesystem)


def fsync_paths(paths: list[Path]) -> None:
    """Make a few files and their names durable: each file, then each directory holding one (unlike
    ``sync_path``, no waiting for whatever else the filesystem has to write)."""
    for path in paths:
        _flush(path, os.O_RDONLY)
    for directory in dict.fromkeys(path.parent for path in paths):
        fsync_dir(directory)


def write_tmp(maildir: Path, data: bytes, sync: bool = True) -> Path:
    """Write ``data`` to a new file in maildir/tmp and fsync it (unless the caller flushes it later with
    ``sync_path``); the caller renames it into cur/."""
    path = maildir / "tmp" / unique_name(len(data))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


_OUR_NAME = re.compile(r"^\d+\.M\d+P\d+Q\d+\.[^,]*,S=(\d+)(?::2,|$)")


def recorded_size(filename: str) -> int | None:
    """The size recorded in a file name that ``unique_name`` made (``,S=<bytes>``); None for other names
    (files an administrator or another server put there are taken as they are)."""
    match = _OUR_NAME.match(filename)
    return int(match.group(1)) if match else None


def parse_info_flags(filename: str) -> list[str]:
    """IMAP flags from a Maildir file name's ":2,FLAGS" info part (used when recovering/importing)."""
    _, sep, info = filename.rpartition(":2,")
    if not sep:
        return []
    mapping = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "T": "\\Deleted", "D": "\\Draft"}
    return [mapping[c] for c in info if c in mapping]
