"""The TLS-RPT recorder (RFC 8460 §4): what the TLS policies saw, counted per UTC day, policy domain and policy,
and the day's aggregate report built from the counts.

The policy code reports every session through ``TLSResults`` (results.py). ``TLSReportRecorder`` counts in
memory and writes the counts to SQLite (data_dir/tls-reports.sqlite) every few seconds and at stop, in one
transaction: recording a session costs a dictionary update, not a disk write. A crash loses at most the last
few seconds of counts, which is acceptable for statistics (nothing a report says is a delivery promise).
Deliveries run in the queue process only, so it is the database's only writer; `mailfleet tls-reports send`
with no server running reads it, and marks the days it reports.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.tlspolicy.results import AppliedPolicy, Failure

log = logging.getLogger("appliance.tlsrpt")

DB_NAME = "tls-reports.sqlite"
FLUSH_EVERY = 5.0  # seconds between two writes of the counts
DAY = 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    day TEXT, policy_domain TEXT, policy_type TEXT, policy_string TEXT, mx_host TEXT,
    successful INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, policy_domain, policy_type, policy_string, mx_host));
CREATE TABLE IF NOT EXISTS failures (
    day TEXT, policy_domain TEXT, policy_type TEXT, policy_string TEXT, mx_host TEXT,
    result_type TEXT, sending_mta_ip TEXT, receiving_mx_hostname TEXT, receiving_ip TEXT,
    failure_reason_code TEXT, sessions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, policy_domain, policy_type, policy_string, mx_host, result_type, sending_mta_ip,
                 receiving_mx_hostname, receiving_ip, failure_reason_code));
CREATE TABLE IF NOT EXISTS reported (
    day TEXT, policy_domain TEXT, report_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (day, policy_domain));
"""

# A policy as the database keys it: domain, type, and its string and mx-host lists as JSON.
_PolicyKey = tuple[str, str, str, str]


def store_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def utc_day(timestamp: float) -> str:
    """'YYYY-MM-DD' of the UTC day holding ``timestamp`` (RFC 8460 §4.1: reports cover whole UTC days)."""
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def day_bounds(day: str) -> tuple[int, int]:
    """The first and the last second of a UTC day, as Unix times."""
    start = calendar.timegm(datetime.date.fromisoformat(day).timetuple())
    return start, start + DAY - 1


def _policy_key(policy: AppliedPolicy) -> _PolicyKey:
    return (policy.policy_domain.lower().rstrip("."), policy.policy_type,
            json.dumps(list(policy.policy_string)), json.dumps(list(policy.mx_host)))


class ReportStore:
    """The counts and the days already reported, in SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, sessions: Counter[tuple[str, _PolicyKey, bool]],
            failures: Counter[tuple[str, _PolicyKey, Failure]]) -> None:
        """Add counts in one transaction: a batch is written whole or not at all."""
        with self._transaction():
            for (day, key, ok), count in sessions.items():
                column = "successful" if ok else "failed"
                self._db.execute(
                    f"INSERT INTO sessions (day, policy_domain, policy_type, policy_string, mx_host, {column}) "
                    f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET {column} = {column} + excluded.{column}",
                    (day, *key, count))
            for (day, key, f), count in failures.items():
                self._db.execute(
                    "INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET sessions = sessions + excluded.sessions",
                    (day, *key, f.result_type, f.sending_mta_ip, f.receiving_mx_hostname, f.receiving_ip,
                     f.failure_reason_code, count))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def domains(self, day: str) -> list[str]:
        """The policy domains that saw traffic on ``day``."""
        rows = self._db.execute("SELECT DISTINCT policy_domain FROM sessions WHERE day = ? ORDER BY 1", (day,))
        return [row[0] for row in rows]

    def unreported(self, before: str) -> list[tuple[str, str]]:
        """(day, domain) with counts and no report yet, for the days before ``before``, oldest first."""
        rows = self._db.execute(
            "SELECT DISTINCT s.day, s.policy_domain FROM sessions s LEFT JOIN reported r "
            "ON r.day = s.day AND r.policy_domain = s.policy_domain "
            "WHERE s.day < ? AND r.report_id IS NULL ORDER BY 1, 2", (before,))
        return [(row[0], row[1]) for row in rows]

    def reported(self, day: str, domain: str) -> str | None:
        """The report ID a (day, domain) was reported under, None when it was not."""
        row = self._db.execute("SELECT report_id FROM reported WHERE day = ? AND policy_domain = ?",
                               (day, domain)).fetchone()
        return row[0] if row else None

    def mark_reported(self, day: str, domain: str, report_id: str, at: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO reported VALUES (?, ?, ?, ?)", (day, domain, report_id, at))

    def policies(self, day: str, domain: str) -> list[dict[str, Any]]:
        """The "policies" array of the report on ``domain`` for ``day`` (RFC 8460 §4.4); [] without traffic."""
        found = []
        rows = self._db.execute(
            "SELECT policy_type, policy_string, mx_host, successful, failed FROM sessions "
            "WHERE day = ? AND policy_domain = ? ORDER BY policy_type, policy_string, mx_host", (day, domain))
        for policy_type, policy_string, mx_host, successful, failed in rows.fetchall():
            policy: dict[str, Any] = {"policy-type": policy_type}
            if strings := json.loads(policy_string):
                policy["policy-string"] = strings
            policy["policy-domain"] = domain
            if hosts := json.loads(mx_host):
                policy["mx-host"] = hosts
            entry: dict[str, Any] = {
                "policy": policy,
                "summary": {"total-successful-session-count": successful, "total-failure-session-count": failed},
            }
            details = self._failure_details(day, (domain, policy_type, policy_string, mx_host))
            if details:
                entry["failure-details"] = details
            found.append(entry)
        return found

    def _failure_details(self, day: str, key: _PolicyKey) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT result_type, sending_mta_ip, receiving_mx_hostname, receiving_ip, failure_reason_code, "
            "sessions FROM failures WHERE day = ? AND policy_domain = ? AND policy_type = ? AND policy_string = ? "
            "AND mx_host = ? ORDER BY sessions DESC, 1, 2, 3, 4, 5", (day, *key))
        details = []
        for result_type, sending_ip, mx_hostname, receiving_ip, reason, sessions in rows.fetchall():
            detail: dict[str, Any] = {"result-type": result_type}
            # RFC 8460 §4.4: the optional members are left out when not known, rather than sent empty.
            for name, value in (("sending-mta-ip", sending_ip), ("receiving-mx-hostname", mx_hostname),
                                ("receiving-ip", receiving_ip)):
                if value:
                    detail[name] = value
            detail["failed-session-count"] = sessions
            if reason:
                detail["failure-reason-code"] = reason
            details.append(detail)
        return details

    def prune(self, before: str) -> int:
        """Forget the counts and report marks of the days before ``before``."""
        with self._transaction():
            removed = self._db.execute("DELETE FROM sessions WHERE day < ?", (before,)).rowcount
            self._db.execute("DELETE FROM failures WHERE day < ?", (before,))
            self._db.execute("DELETE FROM reported WHERE day < ?", (before,))
        return removed


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def build_report(store: ReportStore, day: str, domain: str, organization: str, contact: str,
                 report_id: str) -> dict[str, Any] | None:
    """The aggregate report on ``domain`` for the UTC day ``day`` (RFC 8460 §4.4); None without traffic."""
    policies = store.policies(day, domain)
    if not policies:
        return None
    start, end = day_bounds(day)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": _rfc3339(start), "end-datetime": _rfc3339(end)},
        "contact-info": contact,
        "report-id": report_id,
        "policies": policies,
    }


def _rfc3339(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class TLSReportRecorder:
    """The TLSResults of the queue process with TLS-RPT on: counts in memory, written every FLUSH_EVERY.

    A session costs one clock reading and a Counter update, keyed by the day's number and the (frozen) policy
    as it came; the day's name and the policy's database key are made once per batch, at the flush."""

    def __init__(self, store: ReportStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self._sessions: Counter[tuple[int, AppliedPolicy, bool]] = Counter()
        self._failures: Counter[tuple[int, AppliedPolicy, Failure]] = Counter()

    def success(self, policy: AppliedPolicy) -> None:
        self._sessions[(int(self._clock() // DAY), policy, True)] += 1

    def failure(self, policy: AppliedPolicy, failure: Failure) -> None:
        day = int(self._clock() // DAY)
        self._sessions[(day, policy, False)] += 1
        self._failures[(day, policy, failure)] += 1

    def flush(self) -> None:
        """Write what was counted since the last flush; on a failed write the counts stay for the next one."""
        if not self._sessions:
            return
        sessions, failures = self._sessions, self._failures
        self._sessions, self._failures = Counter(), Counter()
        try:
            self.store.add(_keyed(sessions), _keyed(failures))
        except sqlite3.Error as exc:
            log.warning("tls-reports: cannot write the session counts (kept for the next try): %s", exc)
            self._sessions.update(sessions)
            self._failures.update(failures)

    async def run(self, every: float = FLUSH_EVERY) -> None:
        """Flush every ``every`` seconds until cancelled (the stop flushes once more)."""
        while True:
            await asyncio.sleep(every)
            self.flush()


def _keyed(counts: Counter[tuple[int, AppliedPolicy, Any]]) -> Counter[tuple[str, _PolicyKey, Any]]:
    """The in-memory counts under the database's keys (day name, policy key); equal keys add up."""
    keyed: Counter[tuple[str, _PolicyKey, Any]] = Counter()
    for (day, policy, detail), count in counts.items():
        keyed[(utc_day(day * DAY), _policy_key(policy), detail)] += count
    return keyed
