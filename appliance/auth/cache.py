"""The login cache: recent successful password checks, so that a client that logs in again and again (a mail
client's many IMAP connections, a phone polling POP3, a submission per message) costs argon2 once per TTL.

What it holds, per (canonical user, HMAC-SHA256 of the password under a key drawn at random when the process
starts): the stored hash the password was verified against, when the entry expires, and the client addresses
that used it. Never the password, and never a plain hash of it that a memory dump could be searched with.

Why an entry cannot outlive the password it proves:

- a hit is accepted only while the user's stored hash is still the one the password was checked against, so a
  password changed anywhere (``mailfleet user passwd`` in another process, a SIGHUP that renders a new
  ``password_hash``, the directory's rehash-on-login upgrade, a deleted user) fails the very next login;
- ``forget_user`` and ``retain`` drop entries at once where this process knows of a change;
- ``forget_ip`` drops every entry an address used when that address is banned (the ban check comes before
  the cache in any case: a banned client never reaches it).

Only successes are stored: a wrong password always costs its argon2 check and its count towards a ban.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

#: Client addresses remembered per entry, for ``forget_ip``; past this the oldest is forgotten.
MAX_IPS_PER_ENTRY = 8


@dataclass
class _Entry:
    password_hash: str
    expires: float
    ips: list[str] = field(default_factory=list)


@dataclass
class CacheStats:
    """Counters an administrator reads in the log, and tests observe."""

    hits: int = 0
    misses: int = 0
    stale: int = 0  # entries found whose stored hash had changed since (dropped, the password checked again)


class LoginCache:
    """A bounded LRU of successful logins with a TTL; ``ttl`` 0 or ``max_entries`` 0 keeps nothing.

    Used from the event loop and from the password threads: a lock guards the mapping (each operation is a few
    dictionary steps, never I/O).
    """

    def __init__(self, ttl: float = 300.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)  # per process: a digest means nothing outside it
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        self.stats = CacheStats()
        self.ttl, self.max_entries = ttl, max_entries

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def configure(self, ttl: float, max_entries: int) -> None:
        """SIGHUP: new limits; entries past them go now (all of them when the cache is turned off)."""
        with self._lock:
            self.ttl, self.max_entries = ttl, max_entries
            if not self.enabled:
                self._entries.clear()
            while len(self._entries) > max(self.max_entries, 0):
                self._entries.popitem(last=False)

    def _digest(self, password: str) -> bytes:
        # surrogatepass: a password that is not valid UTF-8 (decoded with surrogateescape) still has a key.
        return hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def lookup(self, user: str, password: str, current_hash: Callable[[str], str | None]) -> bool:
        """True when ``password`` was verified for ``user`` within the TTL and the user's stored hash is still
        the one it was verified against (``current_hash`` reads it now). A stale entry is dropped."""
        if not self.enabled:
            return False
        key = (user, self._digest(password))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.expires <= self._clock():
                if entry is not None:
                    del self._entries[key]
                self.stats.misses += 1
                return False
            verified = entry.password_hash
        if current_hash(user) != verified:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
                self.stats.stale += 1
                self.stats.misses += 1
            return False
        with self._lock:
            self.stats.hits += 1
            if self._entries.get(key) is entry:
                self._entries.move_to_end(key)
        return True

    def store(self, user: str, password: str, password_hash: str, client_ip: str) -> None:
        """Remember a successful check of ``password`` against ``password_hash`` (the hash it was verified
        against, or the one the rehash-on-login wrote). The TTL runs from the check, not from later hits."""
        if not self.enabled:
            return
        key = (user, self._digest(password))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.password_hash != password_hash:
                entry = self._entries[key] = _Entry(password_hash, self._clock() + self.ttl)
            else:
                entry.expires = self._clock() + self.ttl
            self._entries.move_to_end(key)
            self._note_ip(entry, client_ip)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def note_ip(self, user: str, password: str, client_ip: str) -> None:
        """A hit from ``client_ip``: remember the address, so that its ban drops the entry."""
        key = (user, self._digest(password))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._note_ip(entry, client_ip)

    @staticmethod
    def _note_ip(entry: _Entry, client_ip: str) -> None:
        if client_ip in entry.ips:
            return
        entry.ips.append(client_ip)
        if len(entry.ips) > MAX_IPS_PER_ENTRY:
            del entry.ips[0]

    def forget_user(self, user: str) -> int:
        """Drop every entry of ``user`` (its password changed here); how many there were."""
        return self._drop(lambda key, _entry: key[0] == user)

    def forget_ip(self, client_ip: str) -> int:
        """Drop every entry ``client_ip`` used (it is banned now); how many there were."""
        return self._drop(lambda _key, entry: client_ip in entry.ips)

    def retain(self, still_valid: Callable[[str, str], bool]) -> int:
        """Keep only the entries for which ``still_valid(user, verified_hash)`` holds (after a reload that may
        have changed users' hashes); how many were dropped."""
        with self._lock:
            snapshot = [(key, entry.password_hash) for key, entry in self._entries.items()]
        gone = {key for key, verified in snapshot if not still_valid(key[0], verified)}
        return self._drop(lambda key, _entry: key in gone)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _drop(self, doomed: Callable[[tuple[str, bytes], _Entry], bool]) -> int:
        with self._lock:
            keys = [key for key, entry in self._entries.items() if doomed(key, entry)]
            for key in keys:
                del self._entries[key]
        return len(keys)
