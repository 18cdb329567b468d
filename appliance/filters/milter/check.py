"""A milter in the pipeline: checks at CONNECT, HELO, MAIL and RCPT, and a content scanner at the end of DATA.

One milter connection serves one SMTP connection, as in Postfix: it is opened at the first stage that runs (and
negotiated there), kept in the connection's verdicts under ``milter:<name>``, and ends with QUIT when the SMTP
connection closes (the pipeline's close hook). A milter first asked at a later stage (the configuration was
reloaded during the session) hears the earlier events first: connect, HELO, MAIL, the recipients.

Before DATA the checks answer what the milter answered: a refusal (5xx, 4xx, its own reply text) refuses the
command, a refusal at RCPT only that recipient. A milter that is down, hangs or breaks the protocol there gets
the scanner's ``on_error``: "tempfail" answers ``451 4.7.1`` naming the milter for the rest of the connection,
"accept" carries on without it for the rest of the connection and the DATA scan reports it skipped. At DATA
``scan`` raises ScanError instead and the filter engine applies on_error (and its timeout, and the changes).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable
from importlib import metadata

from appliance.config.model import ScannerConfig
from appliance.filters.milter import codec
from appliance.filters.milter.client import (
    Answer,
    Decision,
    Macros,
    MessageAnswer,
    MilterClient,
    MilterUnavailable,
    State,
)
from appliance.filters.scanner import Action, Change, DeleteRecipient, ScanError, ScanRequest, Verdict
from appliance.pipeline.stages import (
    Client,
    MailFrom,
    Pipeline,
    RcptTo,
    Result,
    Stage,
    Transaction,
    refuse,
    tempfail,
)

log = logging.getLogger("appliance.filters")

Outcome = Result | None | Awaitable[Result | None]


def _mta_version() -> str:
    """The value of the macro v (Postfix: milter_macro_v, "$mail_name $mail_version")."""
    try:
        return f"Mailfleet {metadata.version('mailfleet')}"
    except metadata.PackageNotFoundError:
        return "Mailfleet"


MTA_VERSION = _mta_version()


class Milter:
    """One configured milter (filters.scanners[] with type milter): the pipeline's checks and the Scanner."""

    def __init__(self, config: ScannerConfig, hostname: str) -> None:
        self.config = config
        self.name = config.name or "milter"
        self.hostname = hostname
        self._key = f"milter:{self.name}"
        # The milter connection of each SMTP connection by the client's address and port: STARTTLS starts the
        # SMTP session afresh (a new Client without the old verdicts), so the connection opened before it is
        # found here and closed instead of being left open until the milter times it out.
        self._by_peer: dict[tuple[object, ...], tuple[Client, MilterClient]] = {}

    def register(self, pipeline: Pipeline) -> None:
        pipeline.register(Stage.CONNECT, self.connect)
        pipeline.register(Stage.HELO, self.helo)
        pipeline.register(Stage.MAIL, self.mail)
        pipeline.register(Stage.RCPT, self.rcpt)
        pipeline.on_close(self.closed)

    # -- the pipeline's checks: plain functions that answer at once when the milter is not asked ----------

    def connect(self, client: Client, transaction: Transaction | None, argument: object) -> Outcome:
        milter = self._milter(client)
        return self._standing(milter) if not milter.usable else self._run(milter, self._connect(client, milter))

    def helo(self, client: Client, transaction: Transaction | None, name: str) -> Outcome:
        milter = self._milter(client)
        return self._standing(milter) if not milter.usable else self._run(milter, self._helo(client, milter, name))

    def mail(self, client: Client, transaction: Transaction, mail: MailFrom) -> Outcome:
        milter = self._milter(client)
        if not milter.usable:
            return self._standing(milter)
        return self._run(milter, self._mail(client, milter, transaction, mail.address, mail.size))

    def rcpt(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Outcome:
        milter = self._milter(client)
        if not milter.usable:
            return self._standing(milter)
        return self._run(milter, self._rcpt(client, milter, transaction, rcpt.address))

    def closed(self, client: Client) -> None:
        """The SMTP connection ended: QUIT to its milter connection."""
        milter = client.verdicts.get(self._key)
        if isinstance(milter, MilterClient):
            milter.quit()
        peer = _peer(client)
        if peer is not None and self._by_peer.get(peer, (None,))[0] is client:
            del self._by_peer[peer]

    # -- the Scanner at the end of DATA -----------------------------------------------------------------------

    async def scan(self, request: ScanRequest) -> Verdict:
        """The message to the milter; its modifications as Verdict.changes, its decision as Verdict.action."""
        milter = self._milter(request.client)
        if milter.state is State.FAILED:
            if self.config.on_error == "accept":
                return Verdict(self.name, skipped=f"milter unavailable: {milter.failure}")
            raise ScanError(f"{milter}: {milter.failure}")
        try:
            result, dropped = await self._message(request, milter)
        except MilterUnavailable as exc:
            raise ScanError(str(exc)) from None
        return self._verdict(result, dropped)

    async def close(self) -> None:
        """Shutdown or reload: the milter connections still open get QUIT; a session that goes on opens a new
        one at its next stage."""
        for _client, milter in list(self._by_peer.values()):
            milter.quit()
        self._by_peer.clear()

    # -- the events --------------------------------------------------------------------------------------

    async def _connect(self, client: Client, milter: MilterClient) -> Answer:
        ip = client.ip
        peer = _peer(client)
        port = peer[1] if peer is not None and len(peer) > 1 and isinstance(peer[1], int) else 0
        try:
            family = codec.FAMILY_INET6 if ipaddress.ip_address(ip.split("%", 1)[0]).version == 6 \
                else codec.FAMILY_INET
        except ValueError:
            family = codec.FAMILY_UNKNOWN
        # No verified client name is known here: Postfix sends "[address]" then (milter8_conn_event).
        return await milter.connect(f"[{ip}]", family, port, ip, self._macros(client))

    async def _helo(self, client: Client, milter: MilterClient, name: str) -> Answer:
        if not milter.connected:
            answer = await self._connect(client, milter)
            if answer.refused:
                return answer
        return await milter.helo(name, self._macros(client))

    async def _mail(self, client: Client, milter: MilterClient, transaction: Transaction, sender: str,
                    size: int) -> Answer:
        answer = await self._introduce(client, milter)
        if answer.refused:
            return answer
        args = [f"<{sender}>"]
        if size:
            args.append(f"SIZE={size}")
        if transaction.smtp_utf8:
            args.append("SMTPUTF8")
        return await milter.mail(transaction, tuple(args), self._macros(client, sender=sender))

    async def _rcpt(self, client: Client, milter: MilterClient, transaction: Transaction, address: str) -> Answer:
        if milter.transaction is not transaction:  # first asked at RCPT: MAIL (and what precedes it) first
            answer = await self._mail(client, milter, transaction, _sender(transaction), transaction.size)
            if answer.refused:
                return answer
        return await milter.rcpt((f"<{address}>",), self._macros(client, sender=_sender(transaction),
                                                                   recipient=address))

    async def _introduce(self, client: Client, milter: MilterClient) -> Answer:
        """Connect and HELO, if the milter has not heard them yet."""
        if not milter.connected:
            answer = await self._connect(client, milter)
            if answer.refused:
                return answer
        if milter.helo_name is None and client.host_name is not None:
            return await milter.helo(client.host_name, self._macros(client))
        return Answer(Decision.CONTINUE)

    async def _message(self, request: ScanRequest, milter: MilterClient) -> tuple[MessageAnswer, list[Change]]:
        client, transaction = request.client, request.transaction
        dropped: list[Change] = []
        if milter.usable and milter.transaction is not transaction:
            # First asked at DATA: the envelope first. A recipient the milter refuses now is dropped.
            answer = await self._mail(client, milter, transaction, request.sender, transaction.size)
            if answer.refused:
                return MessageAnswer(answer), []
            for recipient in request.recipients:
                answer = await milter.rcpt((f"<{recipient}>",), self._macros(client, sender=request.sender,
                                                                             recipient=recipient))
                if answer.refused:
                    dropped.append(DeleteRecipient(recipient))
        macros = self._macros(client, sender=request.sender, queue_id=request.queue_id)
        return await milter.content(request.data, macros), dropped

    # -- answers ---------------------------------------------------------------------------------------------

    async def _run(self, milter: MilterClient, step: Awaitable[Answer]) -> Result | None:
        try:
            answer = await step
        except MilterUnavailable as exc:
            carry_on = self.config.on_error == "accept"
            log.warning("%s; %s", exc, "carrying on without it for this connection" if carry_on else
                        "answering 451 for this connection")
            return self._standing(milter)
        return _result(answer)

    def _standing(self, milter: MilterClient) -> Result | None:
        """The answer of a milter no longer asked: its refusal of the connection, on_error for a failed one,
        else nothing to say."""
        if milter.state is State.FAILED:
            if self.config.on_error == "accept":
                return None
            return tempfail(f"451 4.7.1 Milter {self.name} unavailable, try again later")
        if milter.state is State.REFUSED and milter.refusal is not None:
            return _result(milter.refusal)
        return None

    def _verdict(self, result: MessageAnswer, dropped: list[Change]) -> Verdict:
        answer = result.answer
        if answer.decision is Decision.REJECT:
            return Verdict(self.name, action=Action.REJECT, reply=answer.reply, detail="milter reject")
        if answer.decision is Decision.TEMPFAIL:
            return Verdict(self.name, action=Action.SOFT_REJECT, reply=answer.reply, detail="milter tempfail")
        if answer.decision is Decision.DISCARD:
            # SMFIR_DISCARD asks the MTA to accept the message and drop it. Nothing is silently dropped here:
            # the message is held in the quarantine, where an administrator sees it and may release it.
            return Verdict(self.name, action=Action.QUARANTINE, detail="milter discard")
        changes = tuple(dropped) + result.changes
        if result.quarantine is not None:
            return Verdict(self.name, action=Action.QUARANTINE, changes=changes, detail=result.quarantine)
        return Verdict(self.name, changes=changes)

    # -- per connection --------------------------------------------------------------------------------------

    def _milter(self, client: Client) -> MilterClient:
        """This SMTP connection's milter client; a new one (not yet connected) at its first stage."""
        milter = client.verdicts.get(self._key)
        if isinstance(milter, MilterClient) and milter.state is not State.CLOSED:
            return milter
        milter = MilterClient(self.name, self.config.address, self.config.timeout)
        client.verdicts[self._key] = milter
        peer = _peer(client)
        if peer is not None:
            stale = self._by_peer.get(peer)
            if stale is not None and stale[0] is not client:
                stale[1].quit()
            self._by_peer[peer] = (client, milter)
        return milter

    def _macros(self, client: Client, sender: str | None = None, recipient: str | None = None,
                queue_id: str = "") -> Macros:
        """The values of the macros we know, by name without braces; the milter's lists (or Postfix's default
        lists) say which are sent at each stage."""
        ip = client.ip
        # Sendmail tags an IPv6 client address "IPv6:" in {client_addr}, as RFC 5321 §4.1.3 writes it.
        values = {"j": self.hostname, "daemon_name": self.hostname, "v": MTA_VERSION, "_": f"unknown [{ip}]",
                  "client_addr": f"IPv6:{ip}" if ":" in ip else ip, "client_name": "unknown"}
        peer = _peer(client)
        if peer is not None and len(peer) > 1:
            values["client_port"] = str(peer[1])
        tls = getattr(client, "ssl", None)  # smtp's Session: the ssl.SSLObject once encrypted
        if tls is not None:
            cipher = tls.cipher()
            values["tls_version"] = str(tls.version())
            if cipher:
                values["cipher"], values["cipher_bits"] = str(cipher[0]), str(cipher[2])
        if client.login:
            values["auth_authen"] = client.login
        if sender is not None:
            values["mail_addr"] = sender
        if recipient is not None:
            values["rcpt_addr"] = recipient
        if queue_id:
            values["i"] = queue_id
        return values.get


def _result(answer: Answer) -> Result | None:
    if answer.decision is Decision.REJECT and answer.reply is not None:
        return refuse(answer.reply)
    if answer.decision is Decision.TEMPFAIL and answer.reply is not None:
        return tempfail(answer.reply)
    return None


def _peer(client: Client) -> tuple[object, ...] | None:
    """The client's (address, port, ...) when the connection gives them (smtp's Session.peer)."""
    peer = getattr(client, "peer", None)
    return peer if isinstance(peer, tuple) and peer else None


def _sender(transaction: Transaction) -> str:
    mail_from = transaction.mail_from or ""
    return "" if mail_from == "<>" else mail_from
