"""The content filters as checks of the pipeline: what ``register`` adds, from the config's filters section.

- On every host, at DATA, before anything else of ours: the trusted-gateway rule. The X-Spam-* and
  X-Mailfleet-Scan headers of a client that is not one of filters.trusted_gateways are removed (anyone can
  write them; only the fleet's gateways are believed); from a trusted gateway, ``X-Spam-Flag: YES`` files the
  message into Junk on a host that delivers into mailboxes.
- With scanners configured:
  - at RCPT, a recipient whose domain has another spam policy than the transaction's first recipient is
    answered ``452 4.5.3`` (RFC 5321 §4.5.3.1.10: the client sends it in another transaction), so one
    policy decides about each message;
  - at DATA, the scan (engine.py) and the policy's decision (policy.py): refused or tempfailed in the session,
    or delivered with the scan's headers (and the Junk folder), or held in the quarantine. Mail from
    authenticated submission users is not scanned unless filters.scan_authenticated says so;
  - a milter's own checks at CONNECT, HELO, MAIL and RCPT (its ``register``).

The scanner classes are imported only for the types configured: a host without scanners imports none.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Awaitable

from appliance.config import Config
from appliance.config.model import FiltersConfig, ScannerConfig, SpamPolicy
from appliance.message.model import META_FOLDER, META_QUARANTINE
from appliance.pipeline.stages import Client, Pipeline, RcptTo, Result, Stage, Transaction, note, refuse, tempfail

from .engine import Clock, Engine
from .headers import apply_changes, parse, remove_fields, rewrite_subject
from .policy import JUNK, OWN_HEADERS, SPAM_FLAG, SPAM_PREFIX, Failure, Outcome, decide
from .scanner import Scanner, ScanRequest

log = logging.getLogger("appliance.filters")

# filters.scanners[].type -> (module, class): each built as Class(config: ScannerConfig, hostname: str).
SCANNER_CLASSES = {
    "clamav": ("appliance.filters.clamd", "ClamdScanner"),
    "spamassassin": ("appliance.filters.spamd", "SpamdScanner"),
    "rspamd": ("appliance.filters.rspamd", "RspamdScanner"),
    "milter": ("appliance.filters.milter.check", "Milter"),
}
POLICY_CONFLICT = "452 4.5.3 Recipients with a different spam policy go in a separate transaction"
_OWN_LOWER = tuple(name.lower().encode() for name in OWN_HEADERS)


def build_scanner(config: ScannerConfig, hostname: str) -> Scanner:
    module, name = SCANNER_CLASSES[config.type]
    scanner: Scanner = getattr(importlib.import_module(module), name)(config, hostname)
    return scanner


def register(pipeline: Pipeline, config: Config, clock: Clock = time.monotonic) -> Engine | None:
    """Register the filters' checks on ``pipeline``; the engine (None without scanners) is closed when the
    pipeline stops."""
    filters = config.filters
    files_junk = config.primary is not None
    pipeline.register(Stage.DATA, GatewayHeaders(filters, files_junk))
    if not filters.scanners:
        return None
    scanners = [(entry, build_scanner(entry, config.hostname)) for entry in filters.scanners]
    engine = Engine(scanners, filters.breaker_failures, filters.breaker_pause, clock)
    pipeline.on_stop(engine.close)
    if filters.domains:
        pipeline.register(Stage.RCPT, PolicyConflict(filters))
    for _, scanner in scanners:
        own_checks = getattr(scanner, "register", None)  # a milter's CONNECT/HELO/MAIL/RCPT callbacks
        if own_checks is not None:
            own_checks(pipeline)
    pipeline.register(Stage.DATA, ContentCheck(engine, filters, config.hostname, files_junk))
    return engine


def _scanned(filters: FiltersConfig, client: Client) -> bool:
    """Authenticated submission users' mail is scanned only with filters.scan_authenticated."""
    return client.login is None or filters.scan_authenticated


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class GatewayHeaders:
    """DATA, every host: the spam headers of a client that is not a trusted gateway are removed; a trusted
    gateway's ``X-Spam-Flag: YES`` files the message into Junk where this host delivers into mailboxes."""

    def __init__(self, filters: FiltersConfig, files_junk: bool) -> None:
        self._filters = filters
        self._files_junk = files_junk

    def __call__(self, client: Client, transaction: Transaction, data: bytes) -> None:
        content = transaction.content
        if not _mentions_own_headers(content):
            return
        if not self._filters.trusts(client.ip):
            transaction.content = remove_fields(content, OWN_HEADERS)
            return
        flags = parse(content).values(SPAM_FLAG)
        if self._files_junk and flags and flags[0].upper() == "YES":  # the first: the gateway nearest to us
            transaction.meta[META_FOLDER] = JUNK


def _mentions_own_headers(content: bytes) -> bool:
    """A quick look (no parse) whether the header section may hold one of our headers."""
    end = content.find(b"\r\n\r\n")
    head = (content if end < 0 else content[:end]).lower()
    return any(name in head for name in _OWN_LOWER)


class PolicyConflict:
    """RCPT: a recipient whose domain's spam policy differs from the first recipient's waits for a transaction
    of its own (452 4.5.3), so that each message is decided under one policy."""

    def __init__(self, filters: FiltersConfig) -> None:
        self._filters = filters

    def __call__(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Result | None:
        if not transaction.accepted or not _scanned(self._filters, client):
            return None
        first = self._filters.policy_for(_domain(transaction.accepted[0][0]))
        if self._filters.policy_for(rcpt.mailbox.domain) != first:
            return tempfail(POLICY_CONFLICT)
        return None


class ContentCheck:
    """DATA: the scan, and the policy's decision as the pipeline's result and the transaction's changes."""

    def __init__(self, engine: Engine, filters: FiltersConfig, hostname: str, files_junk: bool) -> None:
        self._engine = engine
        self._filters = filters
        self._hostname = hostname
        self._files_junk = files_junk

    def __call__(self, client: Client, transaction: Transaction, data: bytes) -> Awaitable[Result | None] | None:
        if not _scanned(self._filters, client):
            return None
        return self._scan(client, transaction)

    def _policy(self, transaction: Transaction) -> SpamPolicy:
        """The policy of the first recipient's domain: the others share it (PolicyConflict)."""
        if not transaction.accepted:
            return self._filters.spam
        return self._filters.policy_for(_domain(transaction.accepted[0][0]))

    async def _scan(self, client: Client, transaction: Transaction) -> Result | None:
        request = ScanRequest(client, transaction, transaction.content, self._hostname,
                              recipients=tuple(given for given, _ in transaction.accepted))
        answers = await self._engine.scan(request)
        decision = decide(answers, self._policy(transaction), self._hostname,
                          virus_action=self._filters.virus_action, files_junk=self._files_junk)
        sender = transaction.mail_from
        if decision.outcome is Outcome.REFUSE:
            assert decision.reply is not None
            log.info("client=%s from=<%s> refused: %s", client.ip, sender, decision.reason)
            return refuse(decision.reply)
        if decision.outcome is Outcome.TEMPFAIL:
            assert decision.reply is not None
            unavailable = any(isinstance(a, Failure) for a in answers)  # already logged by the breaker
            log.log(logging.DEBUG if unavailable else logging.INFO, "client=%s from=<%s> deferred: %s",
                    client.ip, sender, decision.reason)
            return tempfail(decision.reply)
        for problem in apply_changes(transaction, decision.changes):
            log.warning("client=%s from=<%s> a milter's change was not made: %s", client.ip, sender, problem)
        if decision.rewrite_subject:
            subject = decision.subject
            if subject is None:
                current = parse(transaction.content).values("Subject")
                subject = SPAM_PREFIX + (current[0] if current else "")
            transaction.content = rewrite_subject(transaction.content, subject)
        if decision.folder is not None:
            transaction.meta[META_FOLDER] = decision.folder
        if decision.outcome is Outcome.QUARANTINE:
            assert decision.quarantine is not None
            transaction.meta[META_QUARANTINE] = dict(decision.quarantine)
            log.info("client=%s from=<%s> quarantined: %s", client.ip, sender, decision.reason)
        return note(headers=decision.headers, verdicts=(("content_scan", decision.outcome.value),))
