"""Per-client counts shared by every SMTP acceptor process, as Postfix's anvil keeps them for all smtpd processes.

The table lives in a memory-mapped file (or anonymous memory with one process), one region per process. A
process writes only its own region and reads all of them, so there is no lock between processes, and a process
killed with -9 leaves counts behind only until its region is cleared: by the queue process when it reaps it, and
by its replacement at start. Nothing is ever synced to disk; the counts are as volatile as the sessions.

A region is an open-addressing hash table of fixed-size entries. A key (a client IP, a network, a user) hashes
to a slot and lives in the first slot of the next ``PROBES`` that is free or stale (no session held, both rate
windows over); a slot, once used, is reused in place and never emptied, so a reader's probe from the key's slot
never stops short of it (it stops at the first empty slot). A reader may see another process's entry while it
is being written: the counts it sums are then off by that one event, as they would be a moment later anyway.

Rates are sliding-window estimates (as in Cloudflare's and nginx's rate limiters): each entry counts the events
of the current window and of the one before, and the rate is ``current + previous * (1 - elapsed fraction)``.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

# An entry: the key (16 bytes of address or digest and a 4-byte tag, kind << 8 | prefix length), the sessions
# held, the window number of the counts, a spare word, the four counters of that window, the same four of the
# window before it.
ENTRY = struct.Struct("<20sIII4I4I")
ENTRY_SIZE = ENTRY.size  # 64
KEY_SIZE = 20
_SESSIONS_AT, _WINDOW_AT, _COUNTS_AT = 20, 24, 32
_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<II")  # sessions, window number
_COUNTS = struct.Struct("<4I4I")
# What a reader needs of an entry for one counter, from the sessions on: sessions, window number, the
# counter's count in that window and in the one before.
_READ = tuple(struct.Struct(f"<II{4 + 4 * counter}xI12xI") for counter in range(4))
_ZERO = bytes(ENTRY_SIZE - KEY_SIZE)
PROBES = 32  # slots a key may be away from its hash slot
MIN_SLOTS = 4096

# The counters of an entry.
CONNECTIONS, MESSAGES, RECIPIENTS, AUTH = range(4)


def slots_for(max_sessions: int) -> int:
    """Slots per region: a process may hold every session of the service, each with two keys (IP, network)
    that stay until their windows end; four times that keeps the probes short. A power of two."""
    wanted = max(MIN_SLOTS, 4 * max_sessions)
    return 1 << (wanted - 1).bit_length()


class CountTable:
    """This process's view of the shared table: its own region to write, every region to read."""

    def __init__(self, view: mmap.mmap, regions: int, index: int) -> None:
        if not 0 <= index < regions:
            raise ValueError(f"region {index} of {regions}")
        slots = len(view) // (regions * ENTRY_SIZE)
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"{len(view)} bytes are not {regions} regions of a power of two of slots")
        self._map = view
        self._regions = regions
        self._slots = slots
        self._mask = slots - 1
        self._index = index
        self._base = [r * slots * ENTRY_SIZE for r in range(regions)]
        self._map[self._base[index]: self._base[index] + slots * ENTRY_SIZE] = bytes(slots * ENTRY_SIZE)
        self._own: dict[bytes, int] = {}  # key -> offset of its entry in our region
        self._owner: dict[int, bytes] = {}  # offset -> the key it holds (our region)
        # Where a key was last seen in each other region: checked before a probe, dropped when wrong.
        self._hints: list[dict[bytes, int]] = [{} for _ in range(regions)]

    @classmethod
    def private(cls, slots: int) -> CountTable:
        """A table for one process alone (smtp.workers 0), in anonymous memory."""
        return cls(mmap.mmap(-1, slots * ENTRY_SIZE), 1, 0)

    @classmethod
    def shared(cls, path: Path, regions: int, index: int) -> CountTable:
        """Region `index` of the file the queue process allocated; its size gives the slots per region."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            return cls(mmap.mmap(fd, os.fstat(fd).st_size), regions, index)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ the queue process

    @staticmethod
    def allocate(path: Path, regions: int, slots: int) -> None:
        """A zeroed file for `regions` processes, made before they start (a full disk is an error at start,
        never a SIGBUS on a store into a sparse file's hole)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, regions * slots * ENTRY_SIZE)
        finally:
            os.close(fd)

    @staticmethod
    def clear(path: Path, regions: int, index: int) -> None:
        """Forget what the process of region `index` counted (it died: its sessions are gone)."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            region = size // regions
            with mmap.mmap(fd, size) as view:
                view[index * region: (index + 1) * region] = bytes(region)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ counting

    def hit(self, key: bytes, counter: int, now: float, window: float) -> tuple[int, float] | None:
        """Count one event of `counter` for `key`; the sessions every process holds for it and the rate of
        `counter` including this event. None when our region has no room for the key (not counted)."""
        number = int(now // window)
        offset = self._entry(key, number)
        if offset is None:
            return None
        view = self._map
        seen = _U32.unpack_from(view, offset + _WINDOW_AT)[0]
        if seen != number:
            # The counts move to the new window: the current ones become the previous window's when it is the
            # next one, else both are zero. The counters are written before the window number: a reader in
            # between sees the old number with the new counts, low by what was counted, never high.
            current = _COUNTS.unpack_from(view, offset + _COUNTS_AT)[:4] if seen + 1 == number else (0, 0, 0, 0)
            _COUNTS.pack_into(view, offset + _COUNTS_AT, 0, 0, 0, 0, *current)
            _U32.pack_into(view, offset + _WINDOW_AT, number)
        at = offset + _COUNTS_AT + 4 * counter
        _U32.pack_into(view, at, _U32.unpack_from(view, at)[0] + 1)
        return self.totals(key, counter, now, window)

    def totals(self, key: bytes, counter: int, now: float, window: float) -> tuple[int, float]:
        """Sessions held for `key` and the rate of `counter`, summed over every process's region."""
        number = int(now // window)
        left = 1.0 - (now % window) / window
        sessions = 0
        rate = 0.0
        view = self._map
        read = _READ[counter].unpack_from
        for region in range(self._regions):
            offset = self._own.get(key) if region == self._index else self._find(region, key)
            if offset is None:
                continue
            held, seen, current, previous = read(view, offset + _SESSIONS_AT)
            sessions += held
            if seen == number:
                rate += current + previous * left
            elif seen == number - 1:
                rate += current * left
        return sessions, rate

    def add_session(self, key: bytes, delta: int) -> None:
        """Hold (+1) or release (-1) a session for `key` in our region; the key was counted by hit() first
        (a key with no entry here has no session to release and no room to hold one)."""
        offset = self._own.get(key)
        if offset is not None:
            held = _U32.unpack_from(self._map, offset + _SESSIONS_AT)[0]
            _U32.pack_into(self._map, offset + _SESSIONS_AT, max(0, held + delta))

    # ------------------------------------------------------------------ the hash table

    def _entry(self, key: bytes, number: int) -> int | None:
        """The offset of `key`'s entry in our region, made when it has none (in a free slot, or in a stale one:
        no session held and its counts two windows old at `number`); None when no slot is free."""
        offset = self._own.get(key)
        if offset is not None:
            return offset
        base = self._base[self._index]
        start = zlib.crc32(key) & self._mask
        view = self._map
        for step in range(PROBES):
            candidate = base + ((start + step) & self._mask) * ENTRY_SIZE
            old = self._owner.get(candidate)
            if old is not None:
                held, seen = _HEAD.unpack_from(view, candidate + _SESSIONS_AT)
                if held or seen + 1 >= number:
                    continue
                del self._own[old]
            # Counts first, the key last: a reader that matches the key finds its counts, never another's.
            view[candidate + KEY_SIZE: candidate + ENTRY_SIZE] = _ZERO
            view[candidate: candidate + KEY_SIZE] = key
            self._own[key] = candidate
            self._owner[candidate] = key
            return candidate
        return None

    def _find(self, region: int, key: bytes) -> int | None:
        """The offset of `key`'s entry in another process's region, or None."""
        hints = self._hints[region]
        view = self._map
        offset = hints.get(key)
        if offset is not None and view[offset: offset + KEY_SIZE] == key:
            return offset
        base = self._base[region]
        start = zlib.crc32(key) & self._mask
        for step in range(PROBES):
            candidate = base + ((start + step) & self._mask) * ENTRY_SIZE
            there = view[candidate: candidate + KEY_SIZE]
            if there == key:
                if len(hints) >= self._slots:
                    hints.clear()
                hints[key] = candidate
                return candidate
            if not any(there):  # an empty slot: the key is not in this region
                break
        hints.pop(key, None)
        return None
