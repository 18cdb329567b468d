"""The life of a selector: pending -> active -> retiring -> retired, with never a gap in the signatures.

A new selector is ``pending`` until its TXT record is seen in DNS, through the host's resolver, with the same
public key; only then does it become ``active`` and the active key of its algorithm before it ``retiring``: the
old key signs until the new one verifies. A retiring selector's record stays published until ``retire_at``
(the switch + dkim.retire_after, at least queue.lifetime, so that a message signed at intake and still queued
verifies when it is delivered); then its record is withdrawn (RFC 2136 when dkim.publish is set), its key file
removed, and it is ``retired``.

The periodic pass of the queue process (``run_checks``) and `mailfleet dkim` share this code and the key store;
each read-change-write of a domain holds the domain's lock, and nothing slow (DNS) happens while it is held.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update

from appliance.config.model import Config, DKIMPublishConfig
from appliance.dns.resolver import DNSError, Resolver
from appliance.signing.keys import (
    ALGORITHMS,
    DomainKeys,
    KeyRecord,
    KeyStoreError,
    KeyStoreWriter,
    generate_key,
    public_key_data,
    read_private_key,
    record_matches,
    record_name,
    txt_record,
    txt_strings,
)

log = logging.getLogger("appliance.signing")

Lookup = Callable[[str], Awaitable[list[str]]]  # the TXT records at a name, each its strings joined
SUFFIX = {"rsa-sha256": "r", "ed25519-sha256": "e"}
RECORD_TTL = 3600


class RotationError(Exception):
    """A rotation step failed (a refused DNS update, a foreign key under a selector); the message says which."""


class Publisher(Protocol):
    """Puts a selector's TXT record into DNS and takes it out again."""

    def add(self, domain: str, selector: str, record: str) -> None: ...

    def delete(self, domain: str, selector: str) -> None: ...


class DNSUpdatePublisher:
    """RFC 2136 updates signed with TSIG (RFC 8945) to the zone's primary, as the dns_records role sends them."""

    def __init__(self, settings: DKIMPublishConfig, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        try:
            self._keyring = dns.tsigkeyring.from_text({settings.key_name: settings.key_secret})
        except (binascii.Error, ValueError) as exc:
            raise RotationError(f"dkim.publish.key_secret: {exc}") from None

    def add(self, domain: str, selector: str, record: str) -> None:
        update = self._update(domain)
        name = dns.name.from_text(record_name(domain, selector))
        update.delete(name, "TXT")  # RFC 2136 §2.5: the prerequisites-free replace of the rrset
        update.add(name, RECORD_TTL, "TXT", " ".join(f'"{part}"' for part in txt_strings(record)))
        self._send(update, f"adding {name}")

    def delete(self, domain: str, selector: str) -> None:
        update = self._update(domain)
        name = dns.name.from_text(record_name(domain, selector))
        update.delete(name, "TXT")
        self._send(update, f"deleting {name}")

    def _update(self, domain: str) -> dns.update.UpdateMessage:
        zone = self.settings.zone or domain
        return dns.update.UpdateMessage(f"{zone}.", keyring=self._keyring,
                                        keyname=dns.name.from_text(self.settings.key_name),
                                        keyalgorithm=dns.name.from_text(self.settings.key_algorithm))

    def _send(self, update: dns.update.UpdateMessage, what: str) -> None:
        where = f"{self.settings.server} port {self.settings.port}"
        try:
            reply = dns.query.tcp(update, self.settings.server, port=self.settings.port, timeout=self.timeout)
        except (dns.exception.DNSException, OSError) as exc:
            raise RotationError(f"DNS update {what} at {where}: {exc or type(exc).__name__}") from None
        if reply.rcode() != dns.rcode.NOERROR:
            raise RotationError(f"DNS update {what} at {where}: refused with {dns.rcode.to_text(reply.rcode())}")


@dataclass(frozen=True)
class Change:
    """One selector that moved from one state to another, as the log and `mailfleet dkim check` say it."""

    domain: str
    selector: str
    algorithm: str
    old: str
    new: str
    note: str = ""

    def __str__(self) -> str:
        tail = f" ({self.note})" if self.note else ""
        return f"{self.domain} {self.selector} ({self.algorithm}): {self.old} -> {self.new}{tail}"


def when(moment: float | None) -> str:
    return "-" if moment is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


class Rotation:
    """Rotation and the periodic pass over one key store, with the lookup, clock and publisher passed in."""

    @classmethod
    def from_config(cls, config: Config) -> Rotation:
        """The host's store, resolver and publisher. A fresh resolver for every lookup: a record just added must
        not hide behind a cached negative answer (RFC 2308) while a rotation waits for it."""
        settings = config.dns
        publisher = DNSUpdatePublisher(config.dkim.publish) if config.dkim.publish is not None else None
        return cls(KeyStoreWriter(config.dkim_dir), lambda name: Resolver.from_config(settings).txt(name),
                   config.dkim.retire_after, publisher)

    def __init__(self, store: KeyStoreWriter, lookup: Lookup, retire_after: float,
                 publisher: Publisher | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lookup = lookup
        self.retire_after = retire_after
        self.publisher = publisher
        self.clock = clock

    # ------------------------------------------------------------------ DNS

    async def visible(self, keys: DomainKeys, record: KeyRecord) -> bool:
        """True when the selector's record is in DNS now with this key; DNSError when DNS does not answer."""
        public = keys.public(record.selector)
        texts = await self.lookup(record_name(keys.domain, record.selector))
        return any(record_matches(text, record.algorithm, public) for text in texts)

    async def probe(self, domain: str) -> None:
        """A lookup under the domain's _domainkey, so that a rotation with DNS down stops before it changes
        anything; DNSError says why."""
        await self.lookup(f"_domainkey.{domain}.")

    # ------------------------------------------------------------------ adding selectors

    def add(self, domain: str, made: Iterable[tuple[str, str, bytes]]) -> list[KeyRecord]:
        """New pending selectors ((selector, algorithm, PKCS#8 PEM), names free) under the lock: key files first,
        then keys.json that names them."""
        with self.store.lock(domain):
            keys = self.store.read(domain)
            added = []
            for selector, algorithm, pem in made:
                if keys.get(selector) is not None:
                    raise RotationError(f"{domain}: selector {selector!r} exists already")
                self.store.write_key(domain, selector, pem)
                record = KeyRecord(selector, algorithm, "pending", created=self.clock())
                keys.set(record)
                added.append(record)
            self.store.write(keys)
        return added

    def new_selectors(self, domain: str) -> list[KeyRecord]:
        """An rsa and an ed25519 selector named from today's date (``mf20261203r``, ``mf20261203e``; a second
        rotation the same day ``mf20261203br``...), pending. The keys are made before the lock is taken."""
        pems = {algorithm: generate_key(algorithm) for algorithm in ALGORITHMS}
        with self.store.lock(domain):
            taken = {r.selector for r in self.store.read(domain).records}
            date = time.strftime("%Y%m%d", time.gmtime(self.clock()))
            stem = next(s for s in _stems(f"mf{date}") if not {s + c for c in SUFFIX.values()} & taken)
        return self.add(domain, [(stem + SUFFIX[a], a, pem) for a, pem in pems.items()])

    def import_key(self, domain: str, selector: str, pem: bytes, where: str) -> tuple[KeyRecord, bool]:
        """A private key made elsewhere as a pending selector: (record, True) when added, (record, False) when the
        selector holds this key already; RotationError when it holds another."""
        algorithm, pkcs8 = read_private_key(pem, where)
        with self.store.lock(domain):
            keys = self.store.read(domain)
            record = keys.get(selector)
        if record is not None:
            if record.state == "retired" or keys.public(selector) != public_key_data(pkcs8, where):
                raise RotationError(f"{domain}: selector {selector!r} exists ({record.state}) with another key; "
                                    "import the new key under a new selector")
            return record, False
        return self.add(domain, [(selector, algorithm, pkcs8)])[0], True

    def publish(self, domain: str, records: Iterable[KeyRecord]) -> None:
        """The records into DNS through the publisher (RotationError when refused); nothing without one."""
        if self.publisher is None:
            return
        keys = self.store.read(domain)
        for record in records:
            self.publisher.add(domain, record.selector, txt_record(record.algorithm, keys.public(record.selector)))
            log.info("dkim %s %s: record published by DNS update", domain, record.selector)

    def forget(self, domain: str, records: Iterable[KeyRecord]) -> None:
        """Undo ``add`` for selectors that never got published (a refused update): no key, no entry."""
        names = {r.selector for r in records}
        with self.store.lock(domain):
            keys = self.store.read(domain)
            keys.records = [r for r in keys.records if r.selector not in names]
            self.store.write(keys)
            for name in names:
                self.store.remove_key(domain, name)

    # ------------------------------------------------------------------ the periodic pass

    async def check(self, domains: Iterable[str] | None = None) -> list[Change]:
        """Every domain's pass; a domain whose DNS or store fails is logged and left as it is."""
        changes: list[Change] = []
        for domain in self.store.domains() if domains is None else domains:
            try:
                changes += await self.check_domain(domain)
            except (DNSError, KeyStoreError, RotationError) as exc:
                log.warning("dkim %s: left as it is: %s", domain, exc)
        return changes

    async def check_domain(self, domain: str) -> list[Change]:
        """Activate the pending selectors now visible in DNS, retire the retiring ones past retire_at.

        The lookups and DNS updates happen before the lock is taken; DNSError or RotationError from them leaves
        the domain unchanged."""
        keys = self.store.read(domain)
        seen = {r.selector for r in keys.records if r.state == "pending" and await self.visible(keys, r)}
        now = self.clock()
        expired = [r for r in keys.records if r.state == "retiring" and (r.retire_at or 0) <= now]
        for record in expired:
            if self.publisher is not None:
                await asyncio.to_thread(self.publisher.delete, domain, record.selector)
        with self.store.lock(domain):
            keys = self.store.read(domain)
            changes = self._activate(keys, seen, now) + self._retire(keys, {r.selector for r in expired}, now)
            if changes:
                self.store.write(keys)
            for change in changes:
                if change.new == "retired":
                    self.store.remove_key(domain, change.selector)
        for change in changes:
            log.info("dkim %s", change)
        return changes

    def _activate(self, keys: DomainKeys, seen: set[str], now: float) -> list[Change]:
        """The newest visible pending selector of each algorithm becomes active; the active one it replaces
        becomes retiring (at most one active per algorithm)."""
        changes = []
        for algorithm in ALGORITHMS:
            ready = [r for r in keys.records if r.algorithm == algorithm and r.state == "pending"
                     and r.selector in seen]
            if not ready:
                continue
            new = max(ready, key=lambda r: r.created)
            retire_at = now + self.retire_after
            for old in [r for r in keys.records if r.algorithm == algorithm and r.state == "active"]:
                keys.set(old.moved("retiring", replaced=now, retire_at=retire_at))
                changes.append(Change(keys.domain, old.selector, algorithm, "active", "retiring",
                                      f"published until {when(retire_at)}"))
            keys.set(new.moved("active", seen=now, activated=now))
            changes.append(Change(keys.domain, new.selector, algorithm, "pending", "active", "seen in DNS"))
        return changes

    def _retire(self, keys: DomainKeys, expired: set[str], now: float) -> list[Change]:
        changes = []
        for record in list(keys.records):
            if record.selector in expired and record.state == "retiring":
                keys.set(record.moved("retired", retired=now))
                note = "record withdrawn" if self.publisher is not None else "withdraw its record from DNS"
                changes.append(Change(keys.domain, record.selector, record.algorithm, "retiring", "retired", note))
        return changes


def _stems(base: str) -> Iterable[str]:
    yield base
    for letter in "bcdefghijklmnopqrstuvwxyz":
        yield base + letter
    raise RotationError(f"{base}: 26 rotations in one day; wait until tomorrow")


async def run_checks(rotation: Rotation, interval: float) -> None:
    """The queue process's pass: at the start, then every ``interval``; a failure is logged, the loop goes on."""
    while True:
        try:
            await rotation.check()
        except Exception:  # the pass must not end: log once, try again at the next interval
            log.exception("dkim: the periodic pass failed")
        await asyncio.sleep(interval)
