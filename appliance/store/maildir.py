"""Maildir files: unique names, durable writes and the folder directory layout (Maildir++).

The account directory is itself the INBOX Maildir (cur/, new/, tmp/); every other folder is a
Maildir++ sub-directory named "." + the folder name with "/" turned into "." (and "." / "%" escaped,
so that a folder called "a.b" cannot collide with "a/b").
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.durable.files import fsync_dir, write_all

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


def write_tmp(maildir: Path, data: bytes, sync: bool = True) -> Path:
    """Write ``data`` to a new file in maildir/tmp and fsync it (unless the caller flushes it later with
    ``sync_path``); the caller renames it into cur/."""
    path = maildir / "tmp" / unique_name(len(data))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


@dataclass(slots=True)
class StagedFile:
    """A message file written but not yet in its folder: an unnamed file held open (``fd``) or a file in the
    folder's tmp/ (``tmp``). ``place`` gives it its name in cur/ (the commit), ``discard`` drops it."""

    name: str  # the Maildir unique name it gets (unique_name: it records the size)
    fd: int | None = None
    tmp: Path | None = None

    def place(self, final: Path) -> None:
        if self.fd is None:
            assert self.tmp is not None
            os.rename(self.tmp, final)
            return
        # linkat(2) of /proc/self/fd/N with AT_SYMLINK_FOLLOW names an O_TMPFILE file (open(2), O_TMPFILE);
        # os.link only calls linkat (not link, which would link the /proc symlink itself) given a dir fd.
        os.link(str(self.fd), final, src_dir_fd=_proc_fd_dir())
        os.close(self.fd)
        self.fd = None

    def discard(self) -> None:
        if self.fd is not None:  # never linked: the file goes with its last descriptor
            os.close(self.fd)
            self.fd = None
        elif self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


_unnamed_files = hasattr(os, "O_TMPFILE")
_proc_fd: tuple[int, int] | None = None  # (pid, descriptor of /proc/self/fd): a forked child opens its own


def _proc_fd_dir() -> int:
    global _proc_fd
    pid = os.getpid()
    if _proc_fd is None or _proc_fd[0] != pid:
        _proc_fd = (pid, os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY))
    return _proc_fd[1]


def write_staged(maildir: Path, data: bytes) -> StagedFile:
    """Write ``data`` (not flushed: the caller flushes the filesystem after ``place``) as an unnamed file
    (O_TMPFILE) in maildir/cur, or in maildir/tmp where the filesystem or /proc cannot do that.

    Why unnamed: creating a named file holds its directory's lock while ext4 picks an inode, and on ext4
    without a journal that pick passes over every inode of the block group freed in the last minutes
    (fs/ext4/ialloc.c, recently_deleted): a millisecond after many deletions, during which other processes
    delivering to the same mailbox spin on the lock. An unnamed file takes no directory lock, and its
    link into cur/ is cheaper than a rename out of tmp/ (measured, two processes, 1 KB: 35 against 55 us
    of system time per message; 0.4 against 1.4 ms right after 5,000 deletions)."""
    global _unnamed_files
    if _unnamed_files:
        try:
            _proc_fd_dir()
            fd = os.open(maildir / "cur", os.O_WRONLY | os.O_TMPFILE, 0o600)
        except OSError as exc:
            # no /proc (a chroot), or a filesystem or kernel without O_TMPFILE (older kernels: EISDIR)
            if exc.filename != "/proc/self/fd" and exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            _unnamed_files = False
        else:
            try:
                write_all(fd, data)
            except BaseException:
                os.close(fd)
                raise
            return StagedFile(unique_name(len(data)), fd=fd)
    tmp = write_tmp(maildir, data, sync=False)
    return StagedFile(tmp.name, tmp=tmp)


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
