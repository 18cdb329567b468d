"""Who may send what to whom: the recipient policy, the pipeline's first check at RCPT TO, composed from the
host's roles.

Relaying is never the default: a recipient outside the domains this host serves is accepted only for a client
inside the outgoing gateway's explicit relay_networks, or for an authenticated submission user. Everyone else
gets a 5.7.1 refusal. An accepted local recipient is expanded (aliases, catch-all) into the mailboxes it
delivers to: the check writes them into the stage's ``RcptTo.targets``.

A backed-up or forwarded domain's address is verified before it is accepted, so that the host refuses at RCPT TO
what the primary would refuse instead of bouncing it later to a sender that may be forged (backscatter): against
the domain's list, or by an SMTP callout to the domain's own servers (the ``RecipientVerifier``, which
delivery/callout.py implements; the service hands it in). Every unknown address is answered ``550 5.1.1``, the
shape the dictionary-attack detection counts.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from appliance.config import Config, HostPort
from appliance.config.model import CalloutConfig
from appliance.forwarding.srs import SRS, SRSError, is_srs
from appliance.message.address import Mailbox
from appliance.pipeline.stages import Client, RcptTo, Result, Transaction, refuse, tempfail

log = logging.getLogger("appliance.smtp")


class UserDirectory(Protocol):
    def is_local_domain(self, domain: str) -> bool: ...
    def resolve(self, address: str) -> list[str] | None: ...


class QuotaCheck(Protocol):
    def __call__(self, address: str, size: int) -> bool: ...


class Outcome(enum.Enum):
    """What a recipient callout learnt of an address."""

    VALID = "valid"  # a destination answered 2xx to RCPT TO
    INVALID = "invalid"  # a destination answered 5xx to RCPT TO
    UNKNOWN = "unknown"  # no destination gave a final answer (down, 4xx, refused to talk)


@dataclass(frozen=True)
class Verification:
    outcome: Outcome
    detail: str = ""  # the answer (or why there was none), for the log: "mail.example.net: 550 5.1.1 ..."
    cached: bool = False  # from the cache, not asked now


class RecipientVerifier(Protocol):
    """Asks a domain's own servers whether an address exists (delivery/callout.py's RecipientCallout)."""

    def cached(self, address: str, settings: CalloutConfig) -> Verification | None:
        """The cached answer still within its TTL, or None: answers at once, no network."""
        ...

    def verify(self, address: str, hosts: tuple[HostPort, ...], settings: CalloutConfig) -> Awaitable[Verification]:
        """Ask `hosts` in order; the final answer is cached."""
        ...


@dataclass(frozen=True)
class Decision:
    reply: str  # the SMTP reply to send ("" while a callout has to answer first)
    addresses: tuple[str, ...] = ()  # final recipients to queue (after alias expansion) when accepted
    kind: str = ""  # local, backup, forward, relay: for the transaction log
    callout: tuple[HostPort, ...] = ()  # verify the address with these servers before answering
    settings: CalloutConfig | None = None  # the callout's, with callout

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("250")


@dataclass
class RecipientPolicy:
    config: Config
    directory: UserDirectory | None = None
    over_quota: QuotaCheck | None = None  # True when the mailbox cannot take `size` more bytes
    verifier: RecipientVerifier | None = None  # the callout, for domains with verify: callout
    _relay_denied_code: int = field(init=False, default=550)
    _srs: SRS | None = field(init=False, default=None)  # None: SRS off, the RCPT path tests nothing more
    _srs_domain: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.config.srs.enabled and self.config.srs.secrets and self.config.srs_domain is not None:
            self._srs = SRS(self.config.srs.secrets, self.config.srs.max_age)
            self._srs_domain = self.config.srs_domain
        # A relay attempt: an outgoing gateway refuses it 554, as Postfix does (relay_domains_reject_code); a
        # role that relays for nobody answers 550, as for any other address it does not serve.
        self._relay_denied_code = 554 if self.config.outgoing_gateway is not None else 550

    def is_local_domain(self, domain: str) -> bool:
        if self.config.primary is None:
            return False
        if self.directory is not None:
            return self.directory.is_local_domain(domain)
        return domain in self.config.local_domains

    def check(self, rcpt: Mailbox, ip: str, login: str | None = None, size_hint: int = 0) -> Decision:
        address = str(rcpt)
        domain = rcpt.domain
        config = self.config
        if self._srs is not None and domain == self._srs_domain and is_srs(rcpt.local):
            return self._srs_bounce(address, self._srs)
        if self.is_local_domain(domain):
            return self._local(address, size_hint)
        backup = config.backup_domains.get(domain)
        if backup is not None:
            assert config.backup_mx is not None
            return _verified(address, domain, "backup", backup.verify, backup.recipients, backup.primary_hosts,
                             config.backup_mx.callout)
        forward = config.forward_domains.get(domain)
        if forward is not None:
            assert config.incoming_gateway is not None
            return _verified(address, domain, "forward", forward.verify, forward.recipients, forward.destinations,
                             config.incoming_gateway.callout)
        if login is not None:
            return Decision("250 2.1.5 OK", (address,), "relay")
        if config.outgoing_gateway is not None and config.outgoing_gateway.allows(ip):
            return Decision("250 2.1.5 OK", (address,), "relay")
        return Decision(f"{self._relay_denied_code} 5.7.1 <{address}>: relay access denied")

    def _srs_bounce(self, address: str, srs: SRS) -> Decision:
        """An SRS address of ours: verified (hash, age) or refused 550 5.1.1, so that a forged one makes no
        backscatter. Any sender is accepted for a valid one: RFC 3464 bounces come from <>, but some MTAs bounce
        (and RFC 3834 responders answer) from a real sender, and the hash already makes the address good for
        the one sender we rewrote. The primary sends it on to the original sender; a host in front of it (an
        incoming gateway, a backup MX) passes it on unchanged, as it is, to the primary, which reverses it."""
        try:
            target = srs.reverse(address)
            # An SRS1 address of ours whose first hop was us as well (a message forwarded twice here).
            if self.config.primary is not None and target.rpartition("@")[2].lower() == self._srs_domain:
                target = srs.reverse(target)
        except SRSError as exc:
            return Decision(f"550 5.1.1 <{address}>: SRS address refused: {exc.reason}")
        if self.config.primary is None:
            return Decision("250 2.1.5 OK", (address,), "srs")
        return Decision("250 2.1.5 OK", (target,), "srs")

    def _local(self, address: str, size_hint: int) -> Decision:
        if self.directory is None:
            return Decision("451 4.3.0 user directory unavailable")
        targets = self.directory.resolve(address)
        if not targets:
            return Decision(f"550 5.1.1 <{address}>: no such user here")
        if self.over_quota is not None:
            for target in targets:
                if self.is_local_domain(target.rpartition("@")[2].lower()) and self.over_quota(target, size_hint):
                    # RFC 3463: 4.2.2 mailbox full; the sender retries, as with Postfix + Dovecot.
                    return Decision(f"452 4.2.2 <{address}>: mailbox full")
        return Decision("250 2.1.5 OK", tuple(targets), "local")


def _verified(address: str, domain: str, kind: str, verify: str, recipients: frozenset[str],
              hosts: tuple[HostPort, ...], settings: CalloutConfig) -> Decision:
    """A backed-up or forwarded domain's address: accepted when it is listed (or the domain's catch-all is), or
    after the callout (see ``after_callout``), or at once with verify none."""
    if verify == "list":
        if address.lower() not in recipients and f"@{domain}" not in recipients:
            return Decision(f"550 5.1.1 <{address}>: recipient unknown (not in the list of {domain})")
    elif verify == "callout":
        return Decision("", (address,), kind, callout=hosts, settings=settings)
    return Decision("250 2.1.5 OK", (address,), kind)


def after_callout(decision: Decision, address: str, verification: Verification) -> Decision:
    """The answer to a RCPT TO that waited for a callout."""
    if verification.outcome is Outcome.VALID:
        return Decision("250 2.1.5 OK", decision.addresses, decision.kind)
    if verification.outcome is Outcome.INVALID:
        return Decision(f"550 5.1.1 <{address}>: recipient unknown (refused by its destination)")
    assert decision.settings is not None
    if decision.settings.unreachable == "accept":
        log.warning("rcpt=<%s> accepted unverified (callout.unreachable: accept): %s", address, verification.detail)
        return Decision("250 2.1.5 OK", decision.addresses, decision.kind)
    # RFC 3463 4.4.1: no answer from host; the sender keeps the message and retries.
    return Decision(f"450 4.4.1 <{address}>: recipient cannot be verified now (its destination did not answer); "
                    "try again later")


class RecipientCheck:
    """The RCPT stage's check: the policy's decision, and on acceptance the mailboxes the address delivers to.
    A decision that needs a callout answers from the verifier's cache at once, or awaits the callout."""

    def __init__(self, policy: RecipientPolicy) -> None:
        self.policy = policy

    def __call__(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Result | None | Awaitable[
            Result | None]:
        decision = self.policy.check(rcpt.mailbox, client.ip, client.login, transaction.size)
        if decision.callout:
            verifier = self.policy.verifier
            address, settings = str(rcpt.mailbox), decision.settings
            assert settings is not None
            if verifier is None:
                decision = Decision(f"451 4.3.0 <{address}>: recipient verification unavailable")
            else:
                known = verifier.cached(address, settings)
                if known is None:
                    return self._after(client, transaction, rcpt, decision,
                                       verifier.verify(address, decision.callout, settings))
                decision = after_callout(decision, address, known)
        return self._answer(client, transaction, rcpt, decision)

    async def _after(self, client: Client, transaction: Transaction, rcpt: RcptTo, decision: Decision,
                     pending: Awaitable[Verification]) -> Result | None:
        verification = await pending
        log.info("rcpt=<%s> callout: %s (%s)", rcpt.address, verification.outcome.value, verification.detail)
        return self._answer(client, transaction, rcpt, after_callout(decision, str(rcpt.mailbox), verification))

    def _answer(self, client: Client, transaction: Transaction, rcpt: RcptTo, decision: Decision) -> Result | None:
        if not decision.accepted:
            log.info("client=%s from=<%s> rcpt=<%s> refused: %s", client.ip, transaction.mail_from, rcpt.address,
                     decision.reply)
            return tempfail(decision.reply) if decision.reply.startswith("4") else refuse(decision.reply)
        rcpt.targets = decision.addresses
        rcpt.kind = decision.kind
        return None
