"""Durable file I/O every room uses: whole writes, fsync of files and directories, the filesystem flush.

POSIX makes a file's contents durable with fsync(2) on the file and its name durable with fsync(2) on the
directory that holds it; syncfs(2) flushes a whole filesystem for about the cost of one fsync.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path


def write_all(fd: int, data: bytes | memoryview) -> None:
    """All of ``data`` to ``fd``, however many write(2) calls that takes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _flush(path: Path, flags: int, flush: Callable[[int], None] = os.fsync) -> None:
    fd = os.open(path, flags)
    try:
        flush(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename/link/unlink in ``path`` durable (POSIX needs the directory itself synced)."""
    _flush(path, os.O_RDONLY | os.O_DIRECTORY)


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
