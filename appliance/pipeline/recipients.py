"""Who may send what to whom: the recipient policy, the pipeline's first check at RCPT TO, composed from the
host's roles.

Relaying is never the default: a recipient outside the domains this host serves is accepted only for a client
inside the outgoing gateway's explicit relay_networks, or for an authenticated submission user. Everyone else
gets a 5.7.1 refusal. An accepted local recipient is expanded (aliases, catch-all) into the mailboxes it
delivers to: the check writes them into the stage's ``RcptTo.targets``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from appliance.config import Config
from appliance.message.address import Mailbox
from appliance.pipeline.stages import Client, RcptTo, Result, Transaction, refuse, tempfail

log = logging.getLogger("appliance.smtp")


class UserDirectory(Protocol):
    def is_local_domain(self, domain: str) -> bool: ...
    def resolve(self, address: str) -> list[str] | None: ...


class QuotaCheck(Protocol):
    def __call__(self, address: str, size: int) -> bool: ...


@dataclass(frozen=True)
class Decision:
    reply: str  # the SMTP reply to send
    addresses: tuple[str, ...] = ()  # final recipients to queue (after alias expansion) when accepted
    kind: str = ""  # local, backup, forward, relay: for the transaction log

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("250")


@dataclass
class RecipientPolicy:
    config: Config
    directory: UserDirectory | None = None
    over_quota: QuotaCheck | None = None  # True when the mailbox cannot take `size` more bytes
    _relay_denied_code: int = field(init=False, default=550)

    def __post_init__(self) -> None:
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
        if self.is_local_domain(domain):
            return self._local(address, size_hint)
        backup = config.backup_domains.get(domain)
        if backup is not None:
            if backup.recipients and address.lower() not in backup.recipients:
                return Decision(f"550 5.1.1 <{address}>: recipient unknown (not in the backup list)")
            return Decision("250 2.1.5 OK", (address,), "backup")
        if domain in config.forward_domains:
            return Decision("250 2.1.5 OK", (address,), "forward")
        if login is not None:
            return Decision("250 2.1.5 OK", (address,), "relay")
        if config.outgoing_gateway is not None and config.outgoing_gateway.allows(ip):
            return Decision("250 2.1.5 OK", (address,), "relay")
        return Decision(f"{self._relay_denied_code} 5.7.1 <{address}>: relay access denied")

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


class RecipientCheck:
    """The RCPT stage's check: the policy's decision, and on acceptance the mailboxes the address delivers to."""

    def __init__(self, policy: RecipientPolicy) -> None:
        self.policy = policy

    def __call__(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Result | None:
        decision = self.policy.check(rcpt.mailbox, client.ip, client.login, transaction.size)
        if not decision.accepted:
            log.info("client=%s from=<%s> rcpt=<%s> refused: %s", client.ip, transaction.mail_from, rcpt.address,
                     decision.reply)
            return tempfail(decision.reply) if decision.reply.startswith("4") else refuse(decision.reply)
        rcpt.targets = decision.addresses
        rcpt.kind = decision.kind
        return None
