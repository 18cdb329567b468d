"""Running the service: `mailfleet serve` in one process or as a queue process with SMTP acceptor processes.

With smtp.workers = 0 everything runs in one asyncio process. Otherwise, as Postfix splits smtpd from qmgr,
this process is the queue process (queue runner, deliveries, IMAP, POP3, control socket) and N acceptor
processes (`mailfleet smtp-worker`, see acceptors.py) accept SMTP on the listening sockets made here, commit
to the shared spool and notify the queue process (messages.py): Python's GIL then stops one busy loop from
starving the other, and both cores work.

SIGTERM drains: listeners close, open SMTP sessions get a grace period, deliveries in flight finish and record
their state. SIGHUP reloads the config: a broken file is logged and the running config kept; a valid one is
handed to every part (Appliance.apply), so open connections carry on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
from pathlib import Path

from appliance.abuse.counts import CountTable, slots_for
from appliance.config import Config, ConfigError, load_config, load_config_with_text, parse_config
from appliance.service import messages
from appliance.service.acceptors import AcceptorPool, die_with_parent
from appliance.service.logs import EscapingFormatter
from appliance.service.messages import Notifier
from appliance.service.root import DRAIN_SECONDS, LIMITS_TABLE, AcceptorSeat, Appliance, Mode
from appliance.smtp.server import SessionTable, bind_listeners

log = logging.getLogger("appliance.serve")


def setup_logging(level: str, process: str = "") -> None:
    tag = f"[{process}] " if process else ""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # The format names neither process, thread nor source line: the logging HOWTO's "Optimization" switches
    # spare each record a getpid(2), the thread lookup and a walk up the stack (7.3 -> 5.7 us a line here;
    # a relayed message makes three lines).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None


def raise_fd_limit(wanted: int) -> None:
    """Each SMTP/IMAP session is a descriptor: lift the soft limit toward the hard one (max_sessions + room)."""
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


def reload_from(app: Appliance, path: Path) -> bool:
    """SIGHUP in the one-process mode: read, validate, apply."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return False
    app.apply(new)
    log.info("config reloaded from %s", path)
    return True


async def _serve_one_process(config_path: Path, config: Config) -> int:
    app = Appliance(config)
    loop = asyncio.get_running_loop()
    # Signals are ours before the listeners open: a SIGHUP while starting is kept and applied once everything
    # is up (SIGHUP's default action would end the process), a SIGTERM stops the service right after.
    done = _stop_event()
    hup_while_starting: list[bool] = []
    loop.add_signal_handler(signal.SIGHUP, hup_while_starting.append, True)
    await app.start()
    loop.add_signal_handler(signal.SIGHUP, reload_from, app, config_path)
    if hup_while_starting:
        reload_from(app, config_path)
    await done.wait()
    await app.stop()
    return 0


async def _serve_with_acceptors(config_path: Path, config: Config, text: str) -> int:
    sockets = {name: bind_listeners(getattr(config.listen, name), listen=False)
               for name in ("smtp", "submission", "submissions") if getattr(config.listen, name)}
    app = Appliance(config, Mode.QUEUE)
    snapshot = config.data_dir / "run" / "config.yml"
    write_snapshot(snapshot, text)
    SessionTable.allocate(config.data_dir / "smtp-sessions", config.smtp.workers)
    limits = config.data_dir / LIMITS_TABLE
    CountTable.allocate(limits, config.smtp.workers, slots_for(config.smtp.max_sessions))

    def forget_counts(index: int) -> None:
        """An acceptor exited: the sessions it counted for its clients are gone with it."""
        try:
            CountTable.clear(limits, config.smtp.workers, index)
        except OSError as exc:  # its replacement clears its region at start anyway
            log.warning("limits: cannot clear the counts of SMTP worker %d: %s", index, exc)

    pool = AcceptorPool(config_path, snapshot, config.smtp.workers, sockets, config.data_dir / "notify.sock",
                        on_exit=forget_counts)
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
    notices = await messages.listen(pool.notify_path, app.on_committed, pool, app.on_delivered)
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
    die_with_parent()
    hup_before_start: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: hup_before_start.append(signum))
    config = read_snapshot(config_path, snapshot)
    setup_logging(config.log_level, f"smtp-worker-{index}")
    raise_fd_limit(config.smtp.max_sessions * 2 + 1024)
    inherited = {name: [socket.socket(fileno=fd) for fd in numbers] for name, numbers in fds.items()}
    notifier = await Notifier.connect(notify_path)
    app = Appliance(config, Mode.ACCEPTOR, AcceptorSeat(inherited, notifier, workers, index))
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
