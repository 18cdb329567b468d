"""What the screening remembers per client IP, in SQLite under data_dir: pregreet passes and DNSBL answers.

One file is shared by every acceptor process (WAL: readers never wait for the writer) and survives restarts,
as postscreen's postscreen_cache_map does, so a client that passed pays the pregreet wait once per ttl
whichever process takes its next connection. Rows hold when they were written, not when they expire: a reload
with a shorter ttl applies to what is already cached. The cache is an optimisation only: a database error is
logged and read as a miss (the client is tested again), never as a refusal.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from appliance.durable.sqlite import enable_wal
from appliance.screening.dnsbl import ZoneAnswer

log = logging.getLogger("appliance.screening")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pregreet (ip TEXT PRIMARY KEY, passed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dnsbl (ip TEXT NOT NULL, zone TEXT NOT NULL, answers TEXT NOT NULL, at REAL NOT NULL,
                                  PRIMARY KEY (ip, zone));
"""
PURGE_EVERY = 1000  # writes between two sweeps of the rows older than their ttl


class ScreeningCache:
    def __init__(self, path: Path, pregreet_ttl: float, dnsbl_ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._pregreet_ttl = pregreet_ttl
        self._dnsbl_ttl = dnsbl_ttl
        self._clock = clock
        self._writes = 0
        self._db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(str(path), isolation_level=None, timeout=2.0)
            db.execute("PRAGMA busy_timeout=2000")
            enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # losing the last passes to a power cut costs a retest
            db.executescript(_SCHEMA)
            self._db = db
            self._purge()
        except sqlite3.Error as exc:
            log.error("screening cache %s unusable, every client is tested afresh: %s", path, exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------ pregreet

    def pregreet_passed(self, ip: str) -> bool:
        """True when ``ip`` passed the pregreet test within the ttl."""
        row = self._read("SELECT 1 FROM pregreet WHERE ip = ? AND passed > ?",
                         (ip, self._clock() - self._pregreet_ttl))
        return bool(row)

    def pregreet_record(self, ip: str, passed: bool) -> None:
        """A pass is remembered for the ttl; a failure forgets any pass, so the client is tested next time."""
        if passed and self._pregreet_ttl > 0:
            self._write("INSERT OR REPLACE INTO pregreet (ip, passed) VALUES (?, ?)", [(ip, self._clock())])
        elif not passed:
            self._write("DELETE FROM pregreet WHERE ip = ?", [(ip,)])

    # ------------------------------------------------------------------ DNSBL

    def dnsbl_answers(self, ip: str, zones: Iterable[str]) -> dict[str, ZoneAnswer]:
        """The answers about ``ip`` still within the ttl, of the zones asked for."""
        wanted = set(zones)
        rows = self._read("SELECT zone, answers FROM dnsbl WHERE ip = ? AND at > ?",
                          (ip, self._clock() - self._dnsbl_ttl), all_rows=True)
        return {zone: ZoneAnswer(zone, tuple(filter(None, answers.split(","))))
                for zone, answers in rows if zone in wanted}

    def dnsbl_store(self, ip: str, answers: Mapping[str, ZoneAnswer]) -> None:
        """Keep the clean answers (listed or not); errors are asked again on the next connection."""
        if self._dnsbl_ttl <= 0:
            return
        now = self._clock()
        self._write("INSERT OR REPLACE INTO dnsbl (ip, zone, answers, at) VALUES (?, ?, ?, ?)",
                    [(ip, zone, ",".join(answer.addresses), now)
                     for zone, answer in answers.items() if answer.cacheable])

    # ------------------------------------------------------------------ storage

    def _read(self, sql: str, args: tuple[object, ...], all_rows: bool = False) -> list:
        if self._db is None:
            return []
        try:
            cursor = self._db.execute(sql, args)
            return cursor.fetchall() if all_rows else list(cursor.fetchone() or ())
        except sqlite3.Error as exc:
            log.error("screening cache read failed, treated as a miss: %s", exc)
            return []

    def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        if self._db is None or not rows:
            return
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            log.error("screening cache write failed (the client is tested again next time): %s", exc)
            return
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:
            self._purge()

    def _purge(self) -> None:
        assert self._db is not None
        now = self._clock()
        try:
            self._db.execute("DELETE FROM pregreet WHERE passed <= ?", (now - self._pregreet_ttl,))
            self._db.execute("DELETE FROM dnsbl WHERE at <= ?", (now - self._dnsbl_ttl,))
        except sqlite3.Error as exc:
            log.error("screening cache sweep failed: %s", exc)
