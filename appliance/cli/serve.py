"""`mailfleet serve`: every service this host's roles need.

With smtp.workers = 0 everything runs in one asyncio process. Otherwise, as Postfix splits smtpd from qmgr,
this process is the queue process (queue runner, deliveries, IMAP, POP3, control socket) and N acceptor
processes (`mailfleet smtp-worker`, see appliance/smtp/workers.py) accept SMTP on the listening sockets made
here, commit to the shared spool and notify the queue process: Python's GIL then stops one busy loop from
starving the other, and both cores work.

SIGTERM drains: listeners close, open SMTP sessions get a grace period, deliveries in flight finish and record
their state. SIGHUP reloads the config: a broken file is logged and the running config kept; a valid one swaps
the policy, routing and delivery settings in place, so open connections carry on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Config, ConfigError, load_config, load_config_with_text, parse_config
from appliance.config.tls import server_tls_context
from appliance.delivery.client import Deliverer
from appliance.delivery.router import LOCAL, Router
from appliance.dns.resolver import Resolver
from appliance.message.model import DELIVERED, QueuedMessage, SpoolCorrupt
from appliance.queue import notify
from appliance.queue.control import ControlServer
from appliance.queue.notify import Notice, Notifier
from appliance.queue.runner import QueueRunner, log_outcome
from appliance.queue.spool import Spool
from appliance.smtp.policy import RecipientPolicy
from appliance.smtp.server import (
    InboundHandler,
    ListenerOptions,
    SessionCounter,
    SessionTable,
    SMTPListeners,
    bind_listeners,
    start_smtp,
)

log = logging.getLogger("appliance.serve")

DRAIN_SECONDS = 20.0


@dataclass
class Appliance:
    """The running services of one host, built from one Config."""

    config: Config
    mode: str = "all"  # all: one process; queue: no SMTP listeners; acceptor: SMTP listeners only
    inherited: dict[str, list[socket.socket]] | None = None  # acceptor: the listening sockets of the parent
    notifier: Notifier | None = None  # acceptor: tells the queue process about committed messages
    workers: int = 1  # acceptor: how many share the session limit
    worker_index: int = 0  # acceptor: its slot in the shared session table
    spool: Spool = field(init=False)
    runner: QueueRunner | None = field(init=False, default=None)
    listeners: SMTPListeners | None = None
    other_servers: list[asyncio.Server] = field(default_factory=list)
    handlers: list[InboundHandler] = field(default_factory=list)
    directory: Any = None
    authenticator: Any = None
    store: Any = None
    control: ControlServer | None = None
    router: Router = field(init=False)
    local: Any = field(init=False, default=None)  # LocalDelivery on a primary: mail for its own mailboxes
    _runner_task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(config.spool_dir)
        if config.primary is not None:
            from appliance.auth.authenticator import Authenticator
            from appliance.auth.directory import Directory
            from appliance.store import MailStore

            self.directory = Directory.from_config(config)
            self.authenticator = Authenticator(
                self.directory, ban_threshold=config.auth.ban_threshold, ban_window=config.auth.ban_window,
                ban_duration=config.auth.ban_duration, exempt_loopback=config.auth.exempt_loopback,
                state_path=config.data_dir / "auth-state.sqlite")
            self.store = MailStore(config.mail_dir)
        self.router = self._router(config)
        self.local = self._local(config)
        if self.mode != "acceptor":
            self.runner = QueueRunner(self.spool, self.router, self._deliverer(config).deliver,
                                      self.local, config.hostname, config.queue.lifetime)

    # ------------------------------------------------------------------ parts built from the config

    def _router(self, config: Config) -> Router:
        return Router(config, self.directory.is_local_domain if self.directory is not None else None)

    def _deliverer(self, config: Config) -> Deliverer:
        resolver = Resolver(list(config.dns.nameservers), port=config.dns.port, timeout=config.dns.timeout)
        own = [hp.host for hp in config.listen.smtp if hp.port == 25]
        return Deliverer(config.hostname, resolver, source_addresses=config.delivery.source_addresses,
                         concurrency_per_destination=config.delivery.concurrency_per_destination,
                         connect_timeout=config.delivery.connect_timeout,
                         command_timeout=config.delivery.command_timeout, own_addresses=own,
                         connection_idle=config.delivery.connection_reuse_time)

    def _local(self, config: Config):  # noqa: ANN202 - LocalDelivery or None
        if self.store is None:
            return None
        from appliance.delivery.local import LocalDelivery

        return LocalDelivery(self.store, config.hostname, quota_of=self.directory.quota)

    def _policy(self, config: Config) -> RecipientPolicy:
        over_quota = None
        if self.store is not None:
            over_quota = self._over_quota
        return RecipientPolicy(config, self.directory, over_quota)

    def _over_quota(self, address: str, size: int) -> bool:
        quota = self.directory.quota(address)
        if not quota:
            return False
        used = self.store.account(address).quota()[0]
        return used + size > quota

    def _sender_allowed(self, login: str, sender: str) -> bool:
        """Submission: MAIL FROM must be the login itself or an alias that delivers to it."""
        if sender.lower() == login.lower():
            return True
        targets = self.directory.resolve(sender) if self.directory is not None else None
        return bool(targets) and login.lower() in (t.lower() for t in targets)

    async def _commit(self, message: QueuedMessage, data: bytes) -> None:
        if self.local is not None and message.recipients and all(
                self.router.route(r.address).kind == LOCAL for r in message.recipients):
            message = await self._deliver_at_once(message, data)
            if not message.recipients:
                return
        envelope = await self.spool.commit(message, data)
        if self.runner is not None:
            self.runner.enqueue(message)
        elif self.notifier is not None:
            self.notifier.committed(message.queue_id, envelope, message.data_offset, message.size)

    async def _deliver_at_once(self, message: QueuedMessage, data: bytes) -> QueuedMessage:
        """A message only for this host's mailboxes goes straight into them before the 250, as Mox and Maddy
        do: the store's commit is as durable as the spool's, and the queue never sees it. Whatever a mailbox
        refuses (full, store error) goes through the spool as usual: retried, or bounced by the queue."""
        assert self.local is not None
        results = await self.local(message, message.recipients, data)
        left = []
        for rcpt in message.recipients:
            result = results[rcpt.address]
            if result.code == 250:
                log_outcome(message.queue_id, rcpt.address, LOCAL, 0, DELIVERED, result)
                if self.notifier is not None:
                    self.notifier.delivered(rcpt.address)
            else:
                left.append(rcpt)
        return dataclasses.replace(message, recipients=left)

    def on_delivered(self, address: str) -> None:
        """Queue process: an acceptor put mail into this mailbox; IMAP sessions idling on it hear it now
        instead of at their next poll."""
        if self.store is not None:
            self.store.changed_elsewhere(address, "INBOX")

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
            log.warning("spool: %s", exc)
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
            loaded = self.runner.load_spool()
            if loaded:
                log.info("spool: %d message(s) waiting from before the start", loaded)
            self._runner_task = asyncio.create_task(self.runner.run(), name="queue-runner")
        tls = server_tls_context(config)
        if self.mode != "acceptor":
            # The control socket first: once SMTP answers, `mailfleet queue ...` must find the server.
            assert self.runner is not None
            self.control = ControlServer(config.data_dir / "control.sock", self.runner)
            await self.control.start()
            await self._start_mailbox_access(tls)
        if self.mode != "queue":
            await self._start_smtp(tls)
        if self.mode != "acceptor":
            log.info("mailfleet %s up: roles %s", config.hostname, ", ".join(config.roles))

    async def _start_smtp(self, tls: Any) -> None:
        config = self.config
        counter = SessionCounter(config.smtp.max_sessions)
        if self.mode == "acceptor":
            counter.table = SessionTable(config.data_dir / "smtp-sessions", self.workers, self.worker_index)
        inherited = self.inherited

        def handler_for(options: ListenerOptions) -> InboundHandler:
            handler = InboundHandler(
                config.hostname, self._policy(config), self._commit, options, config.smtp.max_recipients,
                authenticate=self.authenticator.authenticate if self.authenticator else None,
                is_banned=self.authenticator.is_banned if self.authenticator else None,
                sender_allowed=self._sender_allowed)
            self.handlers.append(handler)
            return handler

        servers = await start_smtp(config.listen.smtp, handler_for, ListenerOptions("smtp"), counter,
                                   config.hostname, config.smtp.max_message_size, tls,
                                   inherited.get("smtp") if inherited is not None else None,
                                   idle_timeout=config.smtp.idle_timeout)
        loopback_plain = config.tls.plaintext_auth_on_loopback
        for name, listen, implicit in (("submission", config.listen.submission, False),
                                       ("submissions", config.listen.submissions, True)):
            if listen:
                servers += await start_smtp(
                    listen, handler_for,
                    ListenerOptions(name, offer_auth=True, require_auth=True, implicit_tls=implicit,
                                    plaintext_auth_on_loopback=loopback_plain),
                    counter, config.hostname, config.smtp.max_message_size, tls,
                    inherited.get(name) if inherited is not None else None, idle_timeout=config.smtp.idle_timeout)
        self.listeners = SMTPListeners(servers, counter)

    async def _start_mailbox_access(self, tls: Any) -> None:
        """IMAP and POP3 for the primary; each lives in its own sub-package with a start_* entry point."""
        config = self.config
        for module_name, entry, plain, secure in (
                ("appliance.imap.server", "start_imap", config.listen.imap, config.listen.imaps),
                ("appliance.pop3.server", "start_pop3", config.listen.pop3, config.listen.pop3s)):
            if not plain and not secure:
                continue
            module = importlib.import_module(module_name)
            start = getattr(module, entry)
            self.other_servers += await start(
                [(hp.host, hp.port) for hp in plain], [(hp.host, hp.port) for hp in secure], self.store,
                self.authenticator, tls, config.hostname, config.tls.plaintext_auth_on_loopback)

    def reload(self, path: Path) -> bool:
        """SIGHUP in the one-process mode: read, validate, apply."""
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        self.apply(new)
        log.info("config reloaded from %s", path)
        return True

    def apply(self, new: Config) -> None:
        """Swap in a validated config: policy, routing, users and delivery settings; connections stay open."""
        if new.listen != self.config.listen or new.roles != self.config.roles or new.data_dir != self.config.data_dir:
            log.warning("reload: listen addresses, roles and data_dir change only with a restart; "
                        "the other settings take effect now")
        self.config = new
        if new.primary is not None and self.directory is not None:
            from appliance.auth.directory import Directory

            # Users, aliases and catch-alls rendered into the config change with it.
            self.directory = Directory.from_config(new)
            self.authenticator.directory = self.directory
        self.router = self._router(new)
        self.local = self._local(new)
        if self.runner is not None:
            self.runner.router = self.router
            self.runner._local = self.local
            self.runner._remote = self._deliverer(new).deliver
            self.runner.lifetime = new.queue.lifetime
        for handler in self.handlers:
            handler.policy = self._policy(new)
            handler.max_recipients = new.smtp.max_recipients
        logging.getLogger("appliance").setLevel(new.log_level.upper())

    async def stop(self) -> None:
        if self.mode != "acceptor":
            log.info("stopping: draining SMTP sessions (up to %.0fs) and deliveries in flight", DRAIN_SECONDS)
        for server in self.other_servers:
            server.close()
        if self.listeners is not None:
            await self.listeners.drain(DRAIN_SECONDS)
        if self.runner is not None:
            await self.runner.stop(grace=DRAIN_SECONDS)
        if self._runner_task is not None:
            self._runner_task.cancel()
        if self.control is not None:
            await self.control.stop()
        self.spool.close()
        if self.mode != "acceptor":
            log.info("stopped")


def setup_logging(level: str, process: str = "") -> None:
    tag = f"[{process}] " if process else ""
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    # The format names neither process, thread nor source line: the logging HOWTO's "Optimization" switches
    # spare each record a getpid(2), the thread lookup and a walk up the stack (7.3 -> 5.7 us a line here;
    # a relayed message makes three lines).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None


def raise_fd_limit(wanted: int) -> None:
    """Each SMTP/IMAP session is a descriptor: lift the soft limit toward the hard one (max_sessions + room)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open-file limit is %d, below the %d that smtp.max_sessions needs; raise LimitNOFILE", soft,
                    wanted)


async def serve(config_path: Path) -> int:
    config, text = load_config_with_text(config_path)
    setup_logging(config.log_level)
    raise_fd_limit(config.smtp.max_sessions * 2 + 1024)
    if config.smtp.workers == 0:
        return await _serve_one_process(config_path, config)
    return await _serve_with_acceptors(config_path, config, text)


def write_snapshot(path: Path, text: str) -> None:
    """The config text the queue process validated, for the acceptors: they never read a file that changed
    (or broke) after the validation."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_snapshot(config_path: Path, snapshot: Path) -> Config:
    return parse_config(snapshot.read_text(encoding="utf-8"), source=str(config_path),
                        base_dir=config_path.resolve().parent)


async def _serve_one_process(config_path: Path, config: Config) -> int:
    app = Appliance(config)
    await app.start()
    done = _stop_event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app.reload, config_path)
    await done.wait()
    await app.stop()
    return 0


async def _serve_with_acceptors(config_path: Path, config: Config, text: str) -> int:
    from appliance.smtp.workers import AcceptorPool

    sockets = {name: bind_listeners(getattr(config.listen, name), listen=False)
               for name in ("smtp", "submission", "submissions") if getattr(config.listen, name)}
    app = Appliance(config, mode="queue")
    snapshot = config.data_dir / "run" / "config.yml"
    write_snapshot(snapshot, text)
    pool = AcceptorPool(config_path, snapshot, config.smtp.workers, sockets, config.data_dir / "notify.sock")
    done = _stop_event()
    reloads: set[asyncio.Task] = set()

    async def reload_all() -> None:
        try:
            new, new_text = load_config_with_text(config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        write_snapshot(snapshot, new_text)
        app.apply(new)
        acknowledged = await pool.reload()
        log.info("config reloaded from %s (%d of %d SMTP workers)", config_path, acknowledged, pool.count)

    def on_hup() -> None:
        task = asyncio.create_task(reload_all())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
    notices = await notify.listen(pool.notify_path, app.on_committed, pool, app.on_delivered)
    await app.start()
    for socks in sockets.values():
        for sock in socks:
            sock.listen(1024)  # only now: a client that gets through finds the control socket up
    await pool.start()
    rescan = asyncio.create_task(app.rescan(), name="spool-rescan")
    await done.wait()
    rescan.cancel()
    await pool.stop(DRAIN_SECONDS)
    await app.stop()
    notices.close()
    return 0


async def run_acceptor(config_path: Path, snapshot: Path, index: int, fds: dict[str, list[int]],
                       notify_path: Path, workers: int) -> int:
    """`mailfleet smtp-worker`: SMTP on the queue process's sockets; dies with it (PR_SET_PDEATHSIG)."""
    from appliance.smtp.workers import die_with_parent

    die_with_parent()
    hup_before_start: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: hup_before_start.append(signum))
    config = read_snapshot(config_path, snapshot)
    setup_logging(config.log_level, f"smtp-worker-{index}")
    raise_fd_limit(config.smtp.max_sessions * 2 + 1024)
    inherited = {name: [socket.socket(fileno=fd) for fd in numbers] for name, numbers in fds.items()}
    notifier = await Notifier.connect(notify_path)
    app = Appliance(config, mode="acceptor", inherited=inherited, notifier=notifier, workers=workers,
                    worker_index=index)
    await app.start()
    done = _stop_event()

    def on_hup() -> None:
        try:
            app.apply(read_snapshot(config_path, snapshot))
        except (ConfigError, OSError) as exc:  # the queue process validated it: only a local fault gets here
            log.error("reload failed, keeping the running config: %s", exc)
            notifier.reloaded(index, False)
            return
        notifier.reloaded(index, True)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
    if hup_before_start:  # a stray SIGHUP while starting: read the snapshot again to be sure
        on_hup()
    notifier.ready(index)  # from now on the queue process sends us its reloads
    await done.wait()
    await app.stop()
    notifier.close()
    return 0


def _stop_event() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    return done
