"""Sender authentication as checks of the pipeline: what ``register`` adds, from the config's sender_auth section.

- On every host, at DATA, first: Authentication-Results fields that carry our authserv-id are removed (RFC 8601
  §5), unless the client is one of filters.trusted_gateways (the primary keeps its gateways' results). On a
  primary, a trusted gateway's DMARC failure files the message into Junk where the actions say junk.
- With sender_auth.enabled, for mail from outside (not an authenticated submission user, not relay_networks,
  not a trusted gateway, whose results are already in the message):
  - at MAIL: a sender address in a domain the fleet hosts is refused (refuse_local_senders); iprev, once per
    connection, and SPF of MAIL FROM and HELO, which leave their verdicts (pipeline/verdicts.py) for the
    checks of later stages (greylisting);
  - at RCPT, with per-domain actions: a recipient whose domain's DMARC actions differ from the first
    recipient's waits for a transaction of its own (452 4.5.3), so that one policy decides about each message;
  - at DATA: DKIM, ARC and DMARC, one Authentication-Results field, and the DMARC policy: a p=reject or
    p=quarantine failure is refused (550 5.7.1), filed into Junk (where this host delivers into mailboxes) or
    only noted, as sender_auth.dmarc_reject / dmarc_quarantine say. A temperror never refuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable

from appliance.config import Config
from appliance.config.model import DmarcActions, FiltersConfig
from appliance.message.model import META_FOLDER
from appliance.pipeline import verdicts
from appliance.pipeline.stages import Client, MailFrom, Pipeline, RcptTo, Result, Stage, Transaction, note, refuse
from appliance.pipeline.stages import tempfail as defer

from . import iprev
from .dmarc import DmarcChecker, DmarcResult
from .resolver import Lookups
from .results import AUTHENTICATION_RESULTS, MethodResult, gateway_dmarc_disposition, header_value, remove_ours
from .signatures import ArcResult, DkimResult, Verifier, headers, usable
from .spfcheck import SpfChecker, SpfResult

log = logging.getLogger("appliance.senderauth")
JUNK = "Junk"  # the folder local delivery files into (store/folders.py's special-use \Junk)
POLICY_CONFLICT = "452 4.5.3 Recipients with a different DMARC policy go in a separate transaction"
# Transaction.verdicts of our own: the SPF results (SpfResult, mail from then HELO) the DATA check reports.
_SPF_RESULTS = "senderauth.spf"


def register(pipeline: Pipeline, config: Config) -> SenderAuth | None:
    """Register the sender-authentication checks on ``pipeline``; None when sender_auth is off (only the removal
    of forged results then)."""
    own_id = config.sender_auth.authserv_id or config.hostname
    pipeline.register(Stage.DATA, ForgedResults(own_id, config.filters))
    if config.primary is not None and config.filters.trusted_gateways:
        pipeline.register(Stage.DATA, GatewayResults(own_id, config))
    if not config.sender_auth.enabled:
        return None
    auth = SenderAuth(config, Lookups(config.dns), own_id)
    pipeline.on_stop(auth.close)
    pipeline.register(Stage.MAIL, auth.mail)
    if config.sender_auth.domains:
        pipeline.register(Stage.RCPT, auth.rcpt)
    pipeline.register(Stage.DATA, auth.data)
    return auth


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class ForgedResults:
    """DATA, every host: Authentication-Results with our authserv-id from anyone but a trusted gateway go."""

    def __init__(self, own_id: str, filters: FiltersConfig) -> None:
        self._own_id = own_id
        self._filters = filters

    def __call__(self, client: Client, transaction: Transaction, data: bytes) -> None:
        content, removed = remove_ours(transaction.content, self._own_id)
        if removed and not self._filters.trusts(client.ip):
            transaction.content = content
            log.info("client=%s from=<%s> removed %d Authentication-Results claiming to be ours (%s)",
                     client.ip, transaction.mail_from, removed, self._own_id)


class GatewayResults:
    """DATA, on a primary behind gateways: a trusted gateway's DMARC failure (in its Authentication-Results, the
    topmost with our authserv-id) is filed into Junk when this host's actions for the recipient's domain say
    junk for that disposition. A gateway cannot file into Junk itself; refusing here would bounce (backscatter),
    so only Junk is done."""

    def __init__(self, own_id: str, config: Config) -> None:
        self._own_id = own_id
        self._filters = config.filters
        self._settings = config.sender_auth

    def __call__(self, client: Client, transaction: Transaction, data: bytes) -> None:
        if not self._filters.trusts(client.ip) or not transaction.accepted:
            return
        disposition = gateway_dmarc_disposition(transaction.content, self._own_id)
        if disposition not in ("reject", "quarantine"):
            return
        actions = self._settings.actions_for(_domain(transaction.accepted[0][0]))
        action = actions.dmarc_reject if disposition == "reject" else actions.dmarc_quarantine
        if action == "junk":
            transaction.meta[META_FOLDER] = JUNK


class SenderAuth:
    """The MAIL, RCPT and DATA checks of sender authentication, with their resolver and thread pool."""

    def __init__(self, config: Config, lookups: Lookups, own_id: str) -> None:
        self._settings = config.sender_auth
        self._filters = config.filters
        self._relay = config.outgoing_gateway
        self._files_junk = config.primary is not None
        self._hosted = frozenset(config.local_domains | set(config.forward_domains) | set(config.backup_domains))
        self._own_id = own_id
        self.lookups = lookups  # the resolver and its cache, the thread pool
        self._spf = SpfChecker(lookups)
        self._signatures = Verifier(lookups)
        self._dmarc = DmarcChecker(lookups)

    async def close(self) -> None:
        await self.lookups.close()

    def _outside(self, client: Client) -> bool:
        """Mail from outside: not ours (a submission user, relay_networks) and not a trusted gateway's."""
        if client.login is not None or self._filters.trusts(client.ip):
            return False
        return self._relay is None or not self._relay.allows(client.ip)

    # ----------------------------------------------------------------------------------------------- MAIL

    def mail(self, client: Client, transaction: Transaction,
             mail_from: MailFrom) -> Result | None | Awaitable[Result | None]:
        if not self._outside(client):
            return None
        sender = mail_from.address
        if self._settings.refuse_local_senders and sender and _domain(sender) in self._hosted:
            log.info("client=%s from=<%s> refused: a sender of a domain of ours, not authenticated",
                     client.ip, sender)
            return refuse(f"550 5.7.1 <{sender}>: mail from {_domain(sender)} must be sent authenticated, "
                          "by submission")
        return self._verify_mail(client, transaction, sender)

    async def _verify_mail(self, client: Client, transaction: Transaction, sender: str) -> Result | None:
        helo = client.host_name or ""
        waits: list[Awaitable[object]] = []
        if verdicts.IPREV not in client.verdicts:
            waits.append(iprev.check(self.lookups, client.ip))
        if self._settings.spf:
            waits.append(self._spf.helo(client.ip, helo))
            if sender:  # for the null reverse-path, the MAIL FROM identity is HELO's (RFC 7208 §2.4)
                waits.append(self._spf.mail_from(client.ip, sender, helo))
        found = list(await asyncio.gather(*waits))
        if verdicts.IPREV not in client.verdicts:
            reverse = found.pop(0)
            assert isinstance(reverse, iprev.IprevResult)
            client.verdicts[verdicts.IPREV] = reverse.result  # the connection's, not the transaction's
            client.verdicts[verdicts.IPREV_NAME] = reverse.name
            client.verdicts[_IPREV_RESULT] = reverse
        if not self._settings.spf:
            return None
        helo_result, *given = found
        assert isinstance(helo_result, SpfResult)
        mailfrom = given[0] if given else dataclasses.replace(helo_result, identity="mailfrom")
        assert isinstance(mailfrom, SpfResult)
        return note(verdicts=((verdicts.SPF, mailfrom.result), (verdicts.SPF_HELO, helo_result.result),
                              (_SPF_RESULTS, (mailfrom, helo_result))))

    # ----------------------------------------------------------------------------------------------- RCPT

    def _actions(self, transaction: Transaction) -> DmarcActions:
        """The DMARC actions of the first recipient's domain: the others share them (``rcpt``)."""
        first = transaction.accepted[0][0] if transaction.accepted else ""
        return self._settings.actions_for(_domain(first))

    def rcpt(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Result | None:
        if not transaction.accepted or not self._outside(client):
            return None
        if self._settings.actions_for(rcpt.mailbox.domain) != self._actions(transaction):
            return defer(POLICY_CONFLICT)
        return None

    # ----------------------------------------------------------------------------------------------- DATA

    def data(self, client: Client, transaction: Transaction, data: bytes) -> Awaitable[Result | None] | None:
        if not self._outside(client):
            return None
        return self._verify_data(client, transaction)

    async def _verify_data(self, client: Client, transaction: Transaction) -> Result | None:
        settings = self._settings
        content = usable(transaction.content)
        fields = headers(content)  # once, for DKIM, ARC and DMARC
        signed: list[DkimResult] = []
        chain: ArcResult | None = None
        if settings.dkim or settings.arc:
            signed, chain = await self._signatures.verify(content, arc=settings.arc, check_dkim=settings.dkim,
                                                          fields=fields)
        spf: tuple[SpfResult, ...] = transaction.verdicts.get(_SPF_RESULTS, ())  # type: ignore[assignment]
        dmarc: DmarcResult | None = None
        if settings.dmarc:
            senders = {r.domain: r.result for r in spf[:1]}  # the MAIL FROM identity (HELO's for <>)
            from_fields = [value.decode("utf-8", "replace") for name, value in fields if name.lower() == b"from"]
            dmarc = await self._dmarc.check(from_fields, senders, [s.domain for s in signed if s.result == "pass"])
        reverse: iprev.IprevResult | None = client.verdicts.get(_IPREV_RESULT)  # type: ignore[assignment]
        results = _results(client.ip, reverse, spf, signed, dmarc, chain)
        header = (AUTHENTICATION_RESULTS, header_value(self._own_id, results))
        if dmarc is None or dmarc.result != "fail" or dmarc.disposition == "none":
            return note(headers=(header,))
        actions = self._actions(transaction)
        action = actions.dmarc_reject if dmarc.disposition == "reject" else actions.dmarc_quarantine
        log.info("client=%s from=<%s> header.from=%s dmarc=fail p=%s: %s", client.ip, transaction.mail_from,
                 dmarc.from_domain, dmarc.disposition, action)
        if action == "reject":
            return refuse(f"550 5.7.1 Unauthenticated mail from {dmarc.from_domain} is refused by its DMARC "
                          f"policy (p={dmarc.disposition})")
        if action == "junk" and self._files_junk:
            transaction.meta[META_FOLDER] = JUNK
        return note(headers=(header,))


_IPREV_RESULT = "senderauth.iprev"  # Client.verdicts of our own: the IprevResult the DATA check reports


def _results(ip: str, reverse: iprev.IprevResult | None, spf: tuple[SpfResult, ...], signed: list[DkimResult],
             dmarc: DmarcResult | None, chain: ArcResult | None) -> list[MethodResult]:
    """The resinfo of each method that ran, in the order of RFC 8601's examples."""
    results = []
    if reverse is not None:
        results.append(MethodResult("iprev", reverse.result, reverse.reason if reverse.result != "pass" else "",
                                    (("policy.iprev", ip),), reverse.name or ""))
    for found in spf:
        key = "smtp.helo" if found.identity == "helo" else "smtp.mailfrom"
        results.append(MethodResult("spf", found.result, found.explanation, ((key, found.domain),)))
    for signature in signed:
        results.append(MethodResult("dkim", signature.result, signature.reason, (
            ("header.d", signature.domain), ("header.s", signature.selector), ("header.b", signature.b))))
    if dmarc is not None:
        comment = f"p={dmarc.policy} dis={dmarc.disposition}" if dmarc.policy else ""
        results.append(MethodResult("dmarc", dmarc.result, dmarc.reason, (("header.from", dmarc.from_domain),),
                                    comment))
    if chain is not None:
        results.append(MethodResult("arc", chain.result, chain.reason, (),
                                    f"i={chain.instances}" if chain.instances else ""))
    return results
