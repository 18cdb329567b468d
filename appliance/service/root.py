"""The composition root: every part of one host's service, built from one Config, and rebuilt from the next.

The parts and who uses them:

- the spool and the queue runner (queue/): in the queue process;
- the user directory, the login bans and the mailbox store (auth/, store/): on a primary;
- the pipeline (checks.py) and the intake with its three targets, the mailboxes, the spool and the quarantine:
  in every process that answers SMTP;
- the SMTP listeners (smtp/), IMAP and POP3 (imap/, pop3/), the control socket (queue/control.py).

A process runs in one of three modes: ``ALL`` (everything in one asyncio process), ``QUEUE`` (no SMTP
listeners: the acceptors have them) or ``ACCEPTOR`` (SMTP only; see acceptors.py). On SIGHUP ``apply`` hands
each part its new settings through the part's own ``reconfigure``/``set_*`` method.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.abuse.counts import CountTable, slots_for
from appliance.abuse.limits import SessionHolds
from appliance.auth.authenticator import Authenticator
from appliance.auth.bans import BanStore, store_path
from appliance.auth.connections import ConnectionLimits
from appliance.auth.directory import Directory
from appliance.config import Config, ConfigError
from appliance.config.tls import server_tls_context
from appliance.delivery.callout import CalloutCache, RecipientCallout
from appliance.delivery.client import Deliverer
from appliance.delivery.local import LocalDelivery, MailboxTarget
from appliance.delivery.router import LOCAL, Router
from appliance.delivery.shaping import Shaper
from appliance.delivery.sieve_actions import SieveActions
from appliance.dns.resolver import Resolver
from appliance.egress.pool import EgressPool
from appliance.egress.store import EgressStore
from appliance.egress.store import store_path as egress_store_path
from appliance.forwarding.srs import SRS, SenderRewrite
from appliance.imap.server import start_imap
from appliance.managesieve.server import start_managesieve
from appliance.message.model import QueuedMessage, Recipient, SpoolCorrupt, new_queue_id
from appliance.pipeline.intake import Intake
from appliance.pipeline.recipients import RecipientPolicy
from appliance.pipeline.stages import Pipeline
from appliance.pop3.server import start_pop3
from appliance.quarantine.store import Quarantine
from appliance.quarantine.target import QuarantineTarget
from appliance.queue.control import ControlServer
from appliance.queue.runner import QueueRunner, SenderFor
from appliance.queue.spool import Spool
from appliance.queue.target import SpoolTarget
from appliance.service.checks import build_pipeline
from appliance.service.messages import Notice, Notifier
from appliance.service.tls_reports import SEND_COMMAND, TLSReporting
from appliance.sieve.engine import SieveEngine
from appliance.sieve.state import SieveState
from appliance.sieve.storage import ScriptStore
from appliance.signing.keys import KeyStore
from appliance.signing.rotation import Rotation, run_checks
from appliance.signing.signer import Signer
from appliance.smtp.server import (
    InboundHandler,
    ListenerOptions,
    SessionCounter,
    SessionTable,
    SMTPListeners,
    start_smtp,
)
from appliance.store import MailStore
from appliance.store.fts import FtsSettings
from appliance.tlspolicy.policy import TLSPolicy
from appliance.tlspolicy.results import NO_RESULTS, TLSResults
from appliance.web.app import build_app
from appliance.web.server import WebServer, web_tls_context

log = logging.getLogger("appliance.serve")

DRAIN_SECONDS = 20.0
LIMITS_TABLE = "smtp-limits"  # under data_dir: the per-client counts of every acceptor (abuse/counts.py)


class Mode(enum.Enum):
    ALL = "all"  # one process: everything
    QUEUE = "queue"  # the queue process beside acceptor processes: no SMTP listeners
    ACCEPTOR = "acceptor"  # an acceptor process: SMTP listeners only


@dataclass(frozen=True)
class AcceptorSeat:
    """What an acceptor process gets from the queue process: the listening sockets, the stream to tell it of
    new mail, and its slot in the shared session table."""

    sockets: dict[str, list[socket.socket]]
    notifier: Notifier
    workers: int
    index: int


class Appliance:
    """The running services of one host, built from one Config."""

    def __init__(self, config: Config, mode: Mode = Mode.ALL, seat: AcceptorSeat | None = None) -> None:
        if (mode is Mode.ACCEPTOR) != (seat is not None):
            raise ValueError("an acceptor process needs its seat, and only it")
        self.config = config
        self.mode = mode
        self._seat = seat
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(config.spool_dir)
        self.directory: Directory | None = None
        self.authenticator: Authenticator | None = None
        self.store: MailStore | None = None
        # The bans of every listener, shared with the host's other processes and `mailfleet ban`.
        self.bans = BanStore(store_path(config), config.auth, config.bans)
        if config.primary is not None:
            self.directory = Directory.from_config(config)
            self.authenticator = Authenticator(self.directory, config.auth, bans=self.bans)
            self.store = MailStore(config.mail_dir, fts=FtsSettings(config.imap.full_text_search,
                                                                   config.imap.fts_max_bytes,
                                                                   config.imap.fts_autoindex))
        self.router = self._router(config)
        self.sieve_state: SieveState | None = None  # vacation replies and done actions, opened with Sieve
        self.local: LocalDelivery | None = None
        self.local = self._local(config)
        # The recipient callout of backed-up and forwarded domains; its cache is shared by the acceptors.
        self.callout = RecipientCallout(config.hostname, CalloutCache(config.data_dir / "recipient-callouts.sqlite"),
                                        Resolver.from_config(config.dns))
        self.signer = _signer(config)  # DKIM: the pipeline's check, the DSNs, the re-signing after a downgrade
        self.runner: QueueRunner | None = None
        self.tls_policy: TLSPolicy | None = None  # MTA-STS and DANE of delivery; built with the first deliverer
        self.egress: EgressPool | None = None  # the outgoing gateway's sending addresses (queue process)
        # The per destination budgets and back-offs: one for the process, kept across reloads.
        self.shaper = Shaper(config.shaping)
        # TLS-RPT: where the TLS policies of delivery report each session (queue process only, its only writer);
        # the reports are DKIM-signed (RFC 8460 §5.3) and go through this host's own queue.
        self.tls_reporting: TLSReporting | None = None
        self.tls_results: TLSResults = NO_RESULTS
        if mode is not Mode.ACCEPTOR and config.tls_reports.enabled:
            self.tls_reporting = TLSReporting(config, self.spool, self._enqueue,
                                              sign=self.signer.sign if self.signer is not None else None)
            self.tls_results = self.tls_reporting.recorder
        if mode is not Mode.ACCEPTOR:
            self.egress = self._egress(config)
            self.runner = QueueRunner(self.spool, self.router, self._deliverer(config).deliver, self.local,
                                      config.hostname, config.queue.lifetime,
                                      sign=self.signer.sign if self.signer is not None else None,
                                      sender_for=self._sender_for(config))
        # Every process that answers SMTP writes held messages itself: the files are named by queue ID.
        self.quarantine = Quarantine(config.quarantine_dir)
        self.intake = Intake(SpoolTarget(self.spool, self._committed), self._mailbox_target(), self._is_local,
                             quarantine=QuarantineTarget(self.quarantine))
        self.listeners: SMTPListeners | None = None
        self.other_servers: list[asyncio.Server] = []
        self.handlers: list[InboundHandler] = []
        self.control: ControlServer | None = None
        self.web: WebServer | None = None  # listen.web: the console, the API, /metrics (queue process)
        self._runner_task: asyncio.Task[None] | None = None
        self._dkim_task: asyncio.Task[None] | None = None
        self.pipeline: Pipeline | None = None  # the SMTP listeners' checks; its scanners live as long as it
        self.client_holds: SessionHolds | None = None  # the per-client limits' sessions; outlive the pipelines
        self.mailbox_limits: ConnectionLimits | None = None  # IMAP and POP3 connections per client address
        self._retiring: set[asyncio.Task[None]] = set()  # pipelines a reload replaced, closing their scanners

    # ------------------------------------------------------------------ parts built from the config

    def _router(self, config: Config) -> Router:
        return Router(config, self.directory.is_local_domain if self.directory is not None else None)

    def _deliverer(self, config: Config) -> Deliverer:
        own = [hp.host for hp in config.listen.smtp if hp.port == 25]
        return Deliverer(config.hostname, Resolver.from_config(config.dns), config.delivery, own_addresses=own,
                         tls_policies=self._tls_policy(config), sources=self.egress,
                         shaper=self.shaper if config.shaping.enabled else None,
                         resign=self.signer.resign if self.signer is not None else None)

    def _enqueue(self, message: QueuedMessage) -> None:
        """A message this host wrote to its own spool (a TLS-RPT report): the queue runner takes it."""
        assert self.runner is not None
        self.runner.enqueue(message)

    def _tls_policy(self, config: Config) -> TLSPolicy | None:
        """One TLSPolicy (and its MTA-STS cache) per process, rebuilt only when its settings change."""
        settings = config.outbound_tls
        wanted = (settings, tuple(config.dns.nameservers), config.dns.port)
        if self.tls_policy is not None and self.tls_policy.built_from == wanted:
            return self.tls_policy
        if self.tls_policy is not None:
            self.tls_policy.close()
            self.tls_policy = None
        if settings.mta_sts or settings.dane:
            self.tls_policy = TLSPolicy(settings, config.data_dir, config.dns.nameservers, config.dns.port,
                                        self.tls_results)
        return self.tls_policy

    def _egress(self, config: Config) -> EgressPool | None:
        """The pool of sending addresses, when this host is an outgoing gateway with egress addresses."""
        gateway = config.outgoing_gateway
        if gateway is None or not gateway.egress:
            return None
        return EgressPool(gateway.egress, gateway.failover, EgressStore(egress_store_path(config)), config.dns)

    def _sender_for(self, config: Config) -> SenderFor | None:
        """SRS for the copies an alias of the primary forwards outside; None (nothing to test) when off."""
        domain = config.srs_domain
        if not config.srs.enabled or config.primary is None or domain is None:
            return None
        own = self.directory.is_local_domain if self.directory is not None else config.local_domains.__contains__
        return SenderRewrite(SRS(config.srs.secrets, config.srs.max_age), domain, own)

    def _local(self, config: Config) -> LocalDelivery | None:
        if self.store is None or self.directory is None:
            return None
        return LocalDelivery(self.store, config.hostname, quota_of=self.directory.quota, sieve=self._sieve(config))

    def _sieve(self, config: Config) -> SieveActions | None:
        """Users' Sieve filters; a broken global script is a ConfigError (at start: exit 2; at a reload: the
        running scripts stay)."""
        if not config.sieve.enabled or self.store is None:
            return None
        root = config.data_dir / "sieve"
        if self.sieve_state is None:
            self.sieve_state = SieveState(root / "state.sqlite")
        try:
            engine = SieveEngine(config.sieve, ScriptStore(root), self.sieve_state)
        except ConfigError as exc:
            if self.local is None or self.local.sieve is None:
                raise
            log.error("reload: %s; the previous Sieve global scripts stay", exc)
            engine = self.local.sieve.engine
        return SieveActions(engine, self.store, config.hostname, self._submit, self._sender_for(config))

    async def _submit(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> None:
        """A message this host writes (Sieve's redirects, vacation replies, DSNs): durable in the spool, then
        handed to the queue as a received one is."""
        message = QueuedMessage(queue_id=new_queue_id(), mail_from=mail_from, arrival=time.time(),
                                recipients=[Recipient(address=r, original=r) for r in rcpts], client="localhost")
        self._committed(message, await self.spool.commit(message, data))

    def _mailbox_target(self) -> MailboxTarget | None:
        if self.local is None:
            return None
        return MailboxTarget(self.local, self._seat.notifier.delivered if self._seat is not None else None)

    def _pipeline(self, config: Config) -> Pipeline:
        policy = RecipientPolicy(config, self.directory, self._over_quota if self.store is not None else None,
                                 self.callout)
        return build_pipeline(config, policy, self.directory, self.client_holds, self.bans, self.signer)

    def _over_quota(self, address: str, size: int) -> bool:
        assert self.directory is not None and self.store is not None
        quota = self.directory.quota(address)
        if not quota:
            return False
        used = self.store.account(address).quota()[0]
        return used + size > quota

    def _is_local(self, address: str) -> bool:
        return self.router.route(address).kind == LOCAL

    def _committed(self, message: QueuedMessage, envelope: bytes) -> None:
        """The spool target committed a message: the queue runner takes it (one process), or the queue process
        hears of it (an acceptor)."""
        if self.runner is not None:
            self.runner.enqueue(message)
        elif self._seat is not None:
            self._seat.notifier.committed(message.queue_id, envelope, message.data_offset, message.size)

    # ------------------------------------------------------------------ what the acceptors tell the queue process

    def on_delivered(self, address: str, folder: str = "INBOX") -> None:
        """Queue process: an acceptor put mail into this folder (INBOX, or Junk for tagged spam); IMAP sessions
        idling on it hear it now instead of at their next poll."""
        if self.store is not None:
            self.store.changed_elsewhere(address, folder)

    def on_committed(self, queue_id: str, notice: Notice | None = None) -> None:
        """Queue process: an acceptor (with the envelope it just wrote) or the rescan names a message."""
        assert self.runner is not None
        if self.runner.knows(queue_id):
            return
        try:
            if notice is not None:
                message = self.spool.from_envelope(queue_id, notice.envelope, notice.data_offset, notice.size)
            else:
                message = self.spool.load(queue_id)
        except FileNotFoundError:
            return  # already delivered and removed
        except SpoolCorrupt as exc:
            if notice is None:  # the rescan read the file itself: it is damaged on disk
                self.runner.damaged(exc)
            else:
                log.warning("spool: %s", exc)  # the notice was unreadable; the rescan reads the file
            return
        self.runner.adopt(message)

    async def rescan(self, every: float = 10.0) -> None:
        """Queue process: pick up messages whose notification was lost (e.g. an acceptor restarting)."""
        while True:
            await asyncio.sleep(every)
            for queue_id in self.spool.ids():
                self.on_committed(queue_id)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        config = self.config
        if self.runner is not None:
            self.quarantine.recover()  # before any acceptor starts: what is in its tmp/ now was never answered
            loaded = self.runner.load_spool()
            if loaded:
                log.info("spool: %d message(s) waiting from before the start", loaded)
            self._runner_task = asyncio.create_task(self.runner.run(), name="queue-runner")
            self._start_dkim_checks(config)
        if self.egress is not None:
            self.egress.start()
        tls = server_tls_context(config)
        if self.runner is not None:
            # The control socket first: once SMTP answers, `mailfleet queue ...` must find the server.
            self.control = ControlServer(config.data_dir / "control.sock", self.runner, self.quarantine)
            if self.tls_reporting is not None:
                self.control.commands[SEND_COMMAND] = self.tls_reporting.send_command
                self.tls_reporting.start()
            await self.control.start()
            await self._start_mailbox_access(tls)
            if config.listen.web:
                self.web = WebServer(build_app(self), config.listen.web, web_tls_context(server_tls_context(config)))
                await self.web.start()
        if self.mode is not Mode.QUEUE:
            await self._start_smtp(tls)
        if self.mode is not Mode.ACCEPTOR:
            log.info("mailfleet %s up: roles %s", config.hostname, ", ".join(config.roles))

    def _start_dkim_checks(self, config: Config) -> None:
        """Queue process: the keys' periodic pass (activate selectors seen in DNS, retire expired ones), anew."""
        if self._dkim_task is not None:
            self._dkim_task.cancel()
            self._dkim_task = None
        if config.dkim.enabled:
            self._dkim_task = asyncio.create_task(run_checks(Rotation.from_config(config),
                                                             config.dkim.check_interval), name="dkim-keys")

    async def _start_smtp(self, tls: ssl.SSLContext) -> None:
        config = self.config
        counter = SessionCounter(config.smtp.max_sessions)
        seat = self._seat
        if seat is not None:
            counter.table = SessionTable(config.data_dir / "smtp-sessions", seat.workers, seat.index)
            counts = CountTable.shared(config.data_dir / LIMITS_TABLE, seat.workers, seat.index)
        else:
            counts = CountTable.private(slots_for(config.smtp.max_sessions))
        self.client_holds = SessionHolds(counts)
        counter.ended = self.client_holds.ended
        pipeline = self.pipeline = self._pipeline(config)
        authenticator = self.authenticator

        def handler_for(options: ListenerOptions) -> InboundHandler:
            handler = InboundHandler(
                config.hostname, pipeline, self.intake.commit, options, _postmaster_domain(config),
                authenticate=authenticator.authenticate if authenticator is not None else None,
                is_banned=authenticator.is_banned if authenticator is not None else None)
            self.handlers.append(handler)
            return handler

        def inherited(name: str) -> list[socket.socket] | None:
            return seat.sockets.get(name) if seat is not None else None

        servers = await start_smtp(config.listen.smtp, handler_for, ListenerOptions("smtp"), counter,
                                   config.hostname, config.smtp, tls, inherited("smtp"))
        loopback_plain = config.tls.plaintext_auth_on_loopback
        for name, listen, implicit in (("submission", config.listen.submission, False),
                                       ("submissions", config.listen.submissions, True)):
            if listen:
                servers += await start_smtp(
                    listen, handler_for,
                    ListenerOptions(name, offer_auth=True, require_auth=True, implicit_tls=implicit,
                                    plaintext_auth_on_loopback=loopback_plain),
                    counter, config.hostname, config.smtp, tls, inherited(name))
        self.listeners = SMTPListeners(servers, counter)

    async def _start_mailbox_access(self, tls: ssl.SSLContext) -> None:
        """IMAP, POP3 and ManageSieve on a primary."""
        config = self.config
        listen = config.listen
        if self.store is None or self.authenticator is None:
            return
        limits = self.mailbox_limits = ConnectionLimits(per_ip=config.limits.mailbox_sessions,
                                                        exempt=config.limits.exempts)
        if listen.imap or listen.imaps:
            self.other_servers += await start_imap(
                [(hp.host, hp.port) for hp in listen.imap], [(hp.host, hp.port) for hp in listen.imaps],
                self.store, self.authenticator, tls, config.hostname, config.tls.plaintext_auth_on_loopback,
                limits)
        if listen.pop3 or listen.pop3s:
            self.other_servers += await start_pop3(
                [(hp.host, hp.port) for hp in listen.pop3], [(hp.host, hp.port) for hp in listen.pop3s],
                self.store, self.authenticator, tls, config.hostname, config.tls.plaintext_auth_on_loopback,
                limits=limits)
        if listen.managesieve:
            self.other_servers += await start_managesieve(
                [(hp.host, hp.port) for hp in listen.managesieve], ScriptStore(config.data_dir / "sieve"),
                self.authenticator, tls, config.hostname, config.tls.plaintext_auth_on_loopback,
                lambda: self.config.sieve, limits)

    def apply(self, new: Config) -> None:
        """Swap in a validated config: policy, routing, users and delivery settings; connections stay open."""
        old = self.config
        if new.listen != old.listen or new.roles != old.roles or new.data_dir != old.data_dir:
            log.warning("reload: listen addresses, roles and data_dir change only with a restart; "
                        "the other settings take effect now")
        self.config = new
        self.bans.reconfigure(new.auth, new.bans)
        if new.primary is not None and self.directory is not None and self.authenticator is not None:
            # Users, aliases and catch-alls rendered into the config change with it.
            self.directory = Directory.from_config(new)
            self.authenticator.reconfigure(new.auth)
            self.authenticator.set_directory(self.directory)
        self.router = self._router(new)
        self.local = self._local(new)
        self.signer = _signer(new)
        self.callout.hostname = new.hostname
        self.callout.resolver = Resolver.from_config(new.dns)
        self.shaper.reconfigure(new.shaping)
        if self.runner is not None:
            self._reconfigure_egress(new)
            self.runner.reconfigure(self.router, self._deliverer(new).deliver, self.local, new.queue.lifetime,
                                    sender_for=self._sender_for(new))
            if new.dkim != old.dkim or new.dns != old.dns:
                self._start_dkim_checks(new)
            self.runner.set_signer(self.signer.sign if self.signer is not None else None)
        self.intake.reconfigure(self._mailbox_target(), self._is_local)
        if self.tls_reporting is not None:
            self.tls_reporting.reconfigure(new)
        if self.mailbox_limits is not None:
            self.mailbox_limits.reconfigure(new.limits.mailbox_sessions, new.limits.exempts)
        if self.handlers:
            retired, pipeline = self.pipeline, self._pipeline(new)
            self.pipeline = pipeline
            for handler in self.handlers:
                handler.reconfigure(pipeline, _postmaster_domain(new))
            if retired is not None:  # its scanners close once the scans still running on them are done
                task = asyncio.get_running_loop().create_task(retired.stop(), name="pipeline-retire")
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        logging.getLogger("appliance").setLevel(new.log_level.upper())

    def _reconfigure_egress(self, new: Config) -> None:
        """SIGHUP: the pool keeps its states and counts; it is made or dropped when egress appears or goes."""
        gateway = new.outgoing_gateway
        if self.egress is not None and gateway is not None and gateway.egress:
            self.egress.reconfigure(gateway.egress, gateway.failover, new.dns)
            return
        retired, self.egress = self.egress, self._egress(new)
        if retired is not None:
            task = asyncio.get_running_loop().create_task(retired.stop(), name="egress-retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        if self.egress is not None:
            self.egress.start()

    async def stop(self) -> None:
        if self.mode is not Mode.ACCEPTOR:
            log.info("stopping: draining SMTP sessions (up to %.0fs) and deliveries in flight", DRAIN_SECONDS)
        for server in self.other_servers:
            server.close()
        if self.web is not None:
            await self.web.stop()
        if self.listeners is not None:
            await self.listeners.drain(DRAIN_SECONDS)
        if self.pipeline is not None:
            await self.pipeline.stop()
        if self._retiring:
            await asyncio.gather(*self._retiring)
        if self.runner is not None:
            await self.runner.stop(grace=DRAIN_SECONDS)
        if self._runner_task is not None:
            self._runner_task.cancel()
        if self._dkim_task is not None:
            self._dkim_task.cancel()
        if self.tls_reporting is not None:  # after the deliveries: they record their last results
            await self.tls_reporting.stop()
        if self.control is not None:
            await self.control.stop()
        if self.egress is not None:
            await self.egress.stop()
        self.spool.close()
        if self.sieve_state is not None:
            self.sieve_state.close()
        self.callout.cache.close()
        if self.tls_policy is not None:
            self.tls_policy.close()
        if self.mode is not Mode.ACCEPTOR:
            log.info("stopped")


def _signer(config: Config) -> Signer | None:
    """The DKIM signer of this host's mail, None when dkim is off (nothing is signed, nothing costs)."""
    if not config.dkim.enabled:
        return None
    return Signer(KeyStore(config.dkim_dir), config.dkim.headers)


def _postmaster_domain(config: Config) -> str | None:
    """RFC 5321 §4.5.1: RCPT TO:<Postmaster> means the postmaster of this host's first mail domain."""
    if config.primary is None or not config.primary.domains:
        return None
    return config.primary.domains[0]
