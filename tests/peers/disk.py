"""A small real filesystem (a tmpfs mounted for the test) to fill up: the disk-full faults, as a host meets them.

Use as a pytest plugin for the `small_disk` fixture: `small_disk()` mounts a fresh tmpfs (root only; the test
is skipped otherwise) and returns its mount point; `fill(path)` takes every free block of the filesystem that
holds ``path`` and returns the filler file, whose removal gives them back. Every mount is unmounted when the
test ends, whatever it left running on it.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "small_disk"]


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the filesystem answers ENOSPC; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    mounted: list[Path] = []

    def mount(size: str = "2m", name: str = "disk") -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            # Lazy: a process the test started may still hold a file there; the kernel detaches it at once.
            subprocess.run(["umount", "--lazy", str(point)], check=False)
