"""The SMTP recipient callout: ask a domain's own servers whether they take an address, before this host accepts
mail for it (as Exim's ``verify = recipient/callout`` and Postfix's ``reject_unverified_recipient`` do).

At each destination in order: connect, EHLO (HELO when refused), ``MAIL FROM:<>``, ``RCPT TO:<address>``, then
RSET and QUIT, so that no message is ever sent. The null reverse-path is the one RFC 5321 §4.5.5 gives to
notifications, which a server may not refuse (§6.1). A 2xx to RCPT TO: the address is valid; a 5xx: it is not.
Anything else (no connection, a 4xx or 5xx greeting, a refused HELO or MAIL, a 4xx to RCPT, a timeout) asks the
next destination; when none gives a final answer the outcome is UNKNOWN, which the policy turns into a tempfail.

Final answers are cached per address (lower case) in SQLite under data_dir, in WAL mode, so that every acceptor
process shares them: a VALID answer for ``positive_ttl``, an INVALID one for ``negative_ttl``; UNKNOWN is never
cached. Concurrent RCPTs for one address in one process wait for one callout.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
from aiosmtplib.errors import SMTPConnectResponseError, SMTPException, SMTPHeloError

from appliance.config import HostPort
from appliance.config.model import CalloutConfig
from appliance.delivery.client import ehlo_or_helo
from appliance.dns.resolver import DNSError, Resolver, ip_literal
from appliance.durable.sqlite import enable_wal, write_transaction
from appliance.pipeline.recipients import Outcome, Verification

log = logging.getLogger("appliance.callout")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS callouts (
    address TEXT PRIMARY KEY,  -- lower case
    valid INTEGER NOT NULL,    -- 1: the destination took it; 0: it refused it
    detail TEXT NOT NULL,      -- the answer, for the log
    checked REAL NOT NULL      -- when (the clock's seconds)
);
CREATE INDEX IF NOT EXISTS callouts_checked ON callouts (checked);
"""


class CalloutCache:
    """Final callout answers per address, in one SQLite file shared by the processes of the service."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
            enable_wal(db)
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def get(self, address: str, settings: CalloutConfig) -> Verification | None:
        """The answer for `address` while it is younger than its TTL (the settings' of now, so a reload that
        shortens a TTL applies to what is cached)."""
        with self._lock:
            row = self._open().execute("SELECT valid, detail, checked FROM callouts WHERE address = ?",
                                       (address.lower(),)).fetchone()
        if row is None:
            return None
        valid, detail, checked = row
        ttl = settings.positive_ttl if valid else settings.negative_ttl
        if self.clock() - checked >= ttl:
            return None
        return Verification(Outcome.VALID if valid else Outcome.INVALID, detail, cached=True)

    def put(self, address: str, verification: Verification, settings: CalloutConfig) -> None:
        """Keep a final answer; rows older than either TTL go at the same time."""
        if verification.outcome is Outcome.UNKNOWN:
            return
        now = self.clock()
        with self._lock:
            db = self._open()
            with write_transaction(db):
                db.execute("INSERT OR REPLACE INTO callouts (address, valid, detail, checked) VALUES (?, ?, ?, ?)",
                           (address.lower(), int(verification.outcome is Outcome.VALID), verification.detail, now))
                db.execute("DELETE FROM callouts WHERE checked < ?",
                           (now - max(settings.positive_ttl, settings.negative_ttl),))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RecipientCallout:
    """The pipeline's RecipientVerifier (pipeline/recipients.py): the cache first, then the callout."""

    def __init__(self, hostname: str, cache: CalloutCache, resolver: Resolver | None = None) -> None:
        self.hostname = hostname
        self.cache = cache
        self.resolver = resolver
        self._running: dict[str, asyncio.Task[Verification]] = {}  # callouts under way, per address

    def cached(self, address: str, settings: CalloutConfig) -> Verification | None:
        try:
            return self.cache.get(address, settings)
        except sqlite3.Error as exc:
            log.warning("callout cache %s unreadable (%s): asking the destination", self.cache.path, exc)
            return None

    async def verify(self, address: str, hosts: tuple[HostPort, ...], settings: CalloutConfig) -> Verification:
        """The callout runs as a task of its own, which every RCPT for the address awaits (shielded): a session
        that ends meanwhile does not cancel it for the others, and its answer is cached all the same."""
        key = address.lower()
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask_and_keep(address, hosts, settings),
                                                          name=f"callout {key}")
            self._running[key] = task
            task.add_done_callback(lambda _done: self._running.pop(key, None))
        return await asyncio.shield(task)

    async def _ask_and_keep(self, address: str, hosts: tuple[HostPort, ...],
                            settings: CalloutConfig) -> Verification:
        verification = await self._ask(address, hosts, settings)
        try:
            self.cache.put(address, verification, settings)
        except sqlite3.Error as exc:
            log.warning("callout cache %s not written (%s)", self.cache.path, exc)
        return verification

    async def _ask(self, address: str, hosts: tuple[HostPort, ...], settings: CalloutConfig) -> Verification:
        tried: list[str] = []
        for hop in hosts:
            for ip in await self._addresses(hop, tried):
                remote = f"{hop.host}[{ip}]:{hop.port}" if ip != hop.host else f"{ip}:{hop.port}"
                try:
                    async with asyncio.timeout(settings.timeout):
                        code, text = await self._rcpt(ip, hop.port, address)
                except (TimeoutError, _NoFinalAnswer, SMTPException, OSError) as exc:
                    tried.append(f"{remote}: {_why(exc, settings.timeout)}")
                    continue
                answer = f"{remote}: {code} {_one_line(text)}"
                if 200 <= code < 300:
                    return Verification(Outcome.VALID, answer)
                if 500 <= code < 600:
                    return Verification(Outcome.INVALID, answer)
                tried.append(answer)  # 4xx: another destination, or a later try, may know
        return Verification(Outcome.UNKNOWN, "; ".join(tried) or "no destination")

    async def _addresses(self, hop: HostPort, tried: list[str]) -> list[str]:
        literal = ip_literal(hop.host)
        if literal is not None or self.resolver is None:
            return [literal or hop.host]
        try:
            return await self.resolver.addresses(hop.host)
        except DNSError as exc:
            tried.append(f"{hop.host}: {exc}")
            return []

    async def _rcpt(self, ip: str, port: int, address: str) -> tuple[int, str]:
        """One callout session: the RCPT TO reply (code, text)."""
        smtp = aiosmtplib.SMTP(hostname=ip, port=port, local_hostname=self.hostname, start_tls=False,
                               validate_certs=False)
        try:
            try:
                await smtp.connect()
            except SMTPConnectResponseError as exc:
                raise _NoFinalAnswer(f"greeting {exc.code} {_one_line(exc.message)}") from exc
            try:
                await ehlo_or_helo(smtp)
            except SMTPHeloError as exc:
                raise _NoFinalAnswer(f"HELO refused: {exc.code} {_one_line(exc.message)}") from exc
            mail = await smtp.execute_command(b"MAIL", b"FROM:<>")
            if mail.code != 250:
                raise _NoFinalAnswer(f"MAIL FROM:<> refused: {mail.code} {_one_line(mail.message)}")
            rcpt = await smtp.execute_command(b"RCPT", f"TO:<{address}>".encode())
            try:
                await smtp.execute_command(b"RSET")
                await smtp.quit()
            except (SMTPException, OSError):
                pass  # the answer is in; how the session ends does not change it
            return rcpt.code, rcpt.message
        finally:
            smtp.close()


class _NoFinalAnswer(Exception):
    """The destination answered, but not to the RCPT TO: ask the next one."""


def _why(exc: BaseException, timeout: float) -> str:
    """Why a destination gave no final answer, for the log."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, _NoFinalAnswer):
        return str(exc)
    return f"{exc.__class__.__name__}: {_one_line(str(exc))}"


def _one_line(text: str) -> str:
    """A peer's reply for our log: one line of printable ASCII, at most 200 characters."""
    flat = " ".join(text.split())
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in flat)[:200]
