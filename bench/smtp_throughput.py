#!/usr/bin/env python3
"""Mailfleet against Postfix on the same machine, in one run, with Postfix's own `smtp-source` as the load.

Cases (each for 1 KB and 100 KB messages, 10 and 50 parallel sessions, one message per SMTP session):
  local  accept into the durable queue and deliver into a Maildir; the clock stops when the last message file
         is in the Maildir (end to end), not when the client got its last 250.
  relay  accept and relay to Postfix's `smtp-sink`; the clock stops when the sink has counted every message.
Then peak memory with 5,000 concurrent idle SMTP sessions (banner read, nothing sent).

Both servers run with their durability on: Postfix fsyncs the queue file before 250 and each Maildir file
(virtual(8)); Mailfleet answers 250 after its spool group commit and fsyncs each Maildir file and index row.
Postfix is a private instance (own config, queue and data directories under a temp dir) on 127.0.0.2; the
system Postfix is left stopped. Only loopback addresses are used. Every wait is bounded; run as root:

    .venv/bin/python bench/smtp_throughput.py            # or: make bench
    .venv/bin/python bench/smtp_throughput.py --messages 500 --sizes 1 --sessions 10 --idle 1000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
POSTFIX_ADDR = "127.0.0.1"  # Postfix insists on an address an interface has, like Mailfleet
SINK_ADDR = "127.0.0.1"
MAILFLEET_ADDR = "127.0.0.1"  # the listen address must be one the host has (Mailfleet checks its interfaces)
LOCAL_DOMAIN = "bench.example"
RELAY_RCPT = "someone@relay.example"
SENDER = "load@source.example"


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------- small tools


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `predicate` until true; returns the monotonic time it became true. Raises BenchError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def listening(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_serving(proc: subprocess.Popen, log: Path, name: str, ready: Callable[[], bool], timeout: float) -> None:
    """Wait until a server we started is `ready`; if it exits first, the error quotes the end of its `log`."""

    def up() -> bool:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BenchError(f"{name} exited with {proc.returncode}; its log ends:\n{tail}")
        return ready()

    wait_until(up, timeout, f"{name} to listen", interval=0.1)


def terminate(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM a process we started, SIGKILL it when it has not exited after `grace` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def count_files(dirs: list[Path]) -> int:
    total = 0
    for d in dirs:
        with contextlib.suppress(FileNotFoundError), os.scandir(d) as it:
            total += sum(1 for e in it if not e.name.startswith("."))
    return total


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (kB) of one process."""
    out: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def proc_cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU time of one process (all its threads), seconds; with `reaped`, plus that of its children
    that have exited and been waited for (cutime + cstime: a prefork server's retired children, forked helpers)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
        return ticks / os.sysconf("SC_CLK_TCK")
    return 0.0


def proc_pss(pid: int) -> int:
    """Proportional set size (kB): shared pages divided among the processes sharing them."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def processes_named(comm: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if Path(f"/proc/{entry.name}/comm").read_text().strip() == comm:
                    pids.append(int(entry.name))
    return pids


def raise_nofile(limit: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(limit, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def mb(kib: int) -> str:
    return f"{kib / 1024:.0f} MB"


# ---------------------------------------------------------------------------------------------- the sink


class Sink:
    """Postfix's smtp-sink on loopback; `-c` prints "mesg=N" after every message, which we follow."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = free_port(address)
        self.dump: Path | None = None  # a directory smtp-sink writes every message into (-d), while set
        self.count = 0
        self._offset = 0  # what earlier smtp-sink processes counted
        self.last_output = b""
        self.proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self, dump: Path | None = None) -> None:
        """Start smtp-sink; with `dump`, it also writes each message it receives to a file in that directory
        (for checking what arrived; it costs a file per message, so measurements run without it)."""
        self.dump = dump
        keep = ["-d", f"{dump}/%H%M%S."] if dump is not None else []
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", *keep, f"{self.address}:{self.port}", "1024"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        wait_until(lambda: listening(self.address, self.port), 10, "smtp-sink to listen")

    def ensure_running(self) -> None:
        """Start the sink again (same port, count carried on) if it died since the last measurement."""
        if self.proc is not None and self.proc.poll() is not None:
            print(f"  bench: smtp-sink had exited (status {self.proc.returncode}, last output "
                  f"{self.last_output!r}); started again", flush=True)
            self._offset = self.count
            self.start(self.dump)

    def _follow(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(65536):
            self.last_output = (self.last_output + chunk)[-300:]
            buf += chunk
            *records, buf = buf.split(b"\r")
            for record in reversed(records):
                _, sep, value = record.rpartition(b"mesg=")
                if sep and value.strip().isdigit():
                    self.count = self._offset + int(value.strip())
                    break

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        if self._thread is not None:
            self._thread.join(10)  # the count of this process is final before another one starts
        self._offset = self.count


# ---------------------------------------------------------------------------------------------- the servers


@dataclass
class Server:
    """What the benchmark needs from either MTA."""

    name: str
    address: str
    port: int
    workdir: Path
    users: list[str] = field(default_factory=list)

    def maildir_dirs(self, user: str) -> list[Path]:
        raise NotImplementedError

    def queue_empty(self) -> bool:
        raise NotImplementedError

    def delivered(self, user: str) -> int:
        return count_files(self.maildir_dirs(user))


class PostfixInstance(Server):
    """A private Postfix instance: own config_directory, queue_directory and data_directory under `workdir`."""

    def __init__(self, workdir: Path, users: list[str], sink: Sink, max_smtpd: int,
                 main_cf: Mapping[str, str] | None = None) -> None:
        super().__init__("Postfix", POSTFIX_ADDR, free_port(POSTFIX_ADDR), workdir, users)
        self.main_cf = dict(main_cf or {})  # main.cf settings on top of the bench's own (milters, relay_domains)
        self.etc = workdir / "etc"
        self.spool = workdir / "spool"
        self.data = workdir / "data"
        self.mail = workdir / "mail"
        self.sink = sink
        self.max_smtpd = max_smtpd
        self.running = False
        self.prefix: list[str] = []  # before the postfix command (e.g. nsenter, to run it in another namespace)

    def _postfix(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, "postfix", "-c", str(self.etc), *args], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            # Without a tty and syslog, postfix(1) keeps its reason to itself: point at how to see it.
            raise BenchError(f"postfix -c {self.etc} {' '.join(args)} failed {proc.stdout}{proc.stderr}(run it on "
                             f"a terminal with --keep to see why; log: {self.workdir / 'maillog'})")
        return proc

    def setup(self) -> None:
        for d in (self.etc, self.spool, self.data, self.mail):
            d.mkdir(parents=True, exist_ok=True)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data, postfix_user.pw_uid, postfix_user.pw_gid)
        (self.etc / "vmailbox").write_text(
            "".join(f"{u}@{LOCAL_DOMAIN} {LOCAL_DOMAIN}/{u}/\n" for u in self.users))
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(self.data),
            "myhostname": "postfix.bench.example",
            "mydestination": "",
            "inet_interfaces": POSTFIX_ADDR,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_banner": "$myhostname ESMTP",
            "virtual_mailbox_domains": LOCAL_DOMAIN,
            "virtual_mailbox_base": str(self.mail),
            "virtual_mailbox_maps": f"texthash:{self.etc / 'vmailbox'}",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "relayhost": f"[{self.sink.address}]:{self.sink.port}",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            # One client address makes every session; Postfix's per-client anvil limits would throttle the load.
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "maillog_file": str(self.workdir / "maillog"),
            "maillog_file_prefixes": str(self.workdir),
            **self.main_cf,
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            if line.startswith("smtp ") and " inet " in line:
                continue
            lines.append(line)
        lines[:0] = self.master_services()
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")
        # No chroot: the instance lives in a temp dir without the chroot's copies of /etc files.
        subprocess.run(["postconf", "-c", str(self.etc), "-F", "*/*/chroot = n"], check=True, timeout=30)
        self._postfix("check")

    def master_services(self) -> list[str]:
        """The master.cf lines of the SMTP listener (in place of Debian's `smtp inet` line)."""
        return [f"{POSTFIX_ADDR}:{self.port} inet n - n - {self.max_smtpd} smtpd"]

    def start(self) -> None:
        self._postfix("start")
        self.running = True
        wait_until(lambda: listening(self.address, self.port), 30, "Postfix to listen")

    def stop(self) -> None:
        if self.running:
            with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
                self._postfix("stop")
            self.running = False

    def maildir_dirs(self, user: str) -> list[Path]:
        return [self.mail / LOCAL_DOMAIN / user / "new", self.mail / LOCAL_DOMAIN / user / "cur"]

    def queue_empty(self) -> bool:
        queues = ("maildrop", "incoming", "active", "deferred", "hold")
        return not any(True for q in queues for _ in _walk_files(self.spool / q))

    def smtpd_memory(self) -> tuple[int, int, int]:
        """(number of smtpd processes of this instance, their summed RSS kB, their summed PSS kB)."""
        master = self._master_pid()
        pids = [p for p in processes_named("smtpd") if _parent(p) == master]
        return len(pids), sum(proc_status(p).get("VmRSS", 0) for p in pids), sum(proc_pss(p) for p in pids)

    def cpu_seconds(self) -> float:
        """CPU time of this instance's processes: master and its live children (smtpd, cleanup, qmgr, smtp, ...),
        and the children master has reaped."""
        return sum(proc_cpu_seconds(p, reaped=True) for p in process_tree(self._master_pid()))

    def _master_pid(self) -> int:
        pidfile = self.spool / "pid" / "master.pid"
        return int(pidfile.read_text().split()[0])


def _walk_files(path: Path) -> Iterator[Path]:
    for root, _dirs, files in os.walk(path):
        for name in files:
            yield Path(root) / name


def _parent(pid: int) -> int:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return -1


def _workers(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Mailfleet may run SMTP acceptor processes beside the queue process)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


class MailfleetInstance(Server):
    """`mailfleet serve` as a real process: roles primary (local Maildir) and outgoing_gateway (to the sink)."""

    def __init__(self, workdir: Path, users: list[str], sink: Sink, max_sessions: int,
                 src: Path = REPO, smtp_workers: str | None = None,
                 roles_config: dict[str, Any] | None = None) -> None:
        super().__init__("Mailfleet", MAILFLEET_ADDR, free_port(MAILFLEET_ADDR), workdir, users)
        self.sink = sink
        self.src = src  # the directory holding the `appliance` package to run (another checkout for A/B runs)
        self.proc: subprocess.Popen | None = None
        self.config_path = workdir / "mailfleet.yml"
        self.data_dir = workdir / "data"
        config: dict[str, Any] = {
            "hostname": "mailfleet.bench.example",
            "data_dir": str(self.data_dir),
            "log_level": "info",
            "listen": {"smtp": [f"{self.address}:{self.port}"]},
            "smtp": {"max_sessions": max_sessions},
        }
        # The roles and their sections; by default those of this benchmark: primary + outgoing_gateway.
        config.update(roles_config if roles_config is not None else {
            "roles": ["primary", "outgoing_gateway"],
            "delivery": {"smarthost": f"{sink.address}:{sink.port}"},
            "primary": {"domains": [LOCAL_DOMAIN],
                        "users": [{"address": f"{u}@{LOCAL_DOMAIN}", "password_hash": None} for u in users]},
            "outgoing_gateway": {"relay_networks": ["127.0.0.0/8"]},
        })
        if smtp_workers is not None:
            config["smtp"]["workers"] = _workers(smtp_workers)
        self.config = config

    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self) -> None:
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli.main", "--config", str(self.config_path), "serve"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.src, preexec_fn=lambda: raise_nofile(20000))
        log.close()
        wait_serving(self.proc, self.workdir / "server.log", "Mailfleet", lambda: listening(self.address, self.port),
                     60)

    def stop(self) -> None:
        terminate(self.proc, 40)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU time of the Mailfleet processes (the server and any acceptor processes it runs)."""
        return sum(proc_cpu_seconds(p, reaped=True) for p in process_tree(self.pid))

    def maildir_dirs(self, user: str) -> list[Path]:
        base = self.data_dir / "mail" / LOCAL_DOMAIN / user
        return [base / "new", base / "cur"]

    def queue_empty(self) -> bool:
        return count_files([self.data_dir / "spool" / "msg"]) == 0


# ---------------------------------------------------------------------------------------------- the runs


@dataclass
class Result:
    server: str
    case: str
    size_kb: int
    sessions: int
    messages: int
    accept_s: float  # smtp-source done: every message answered 250
    total_s: float  # every message in the Maildir / at the sink
    errors: str = ""
    cpu_s: float | None = None  # Mailfleet only: its process's CPU time over the measurement

    @property
    def rate(self) -> float:
        return self.messages / self.total_s if self.total_s else 0.0

    @property
    def accept_rate(self) -> float:
        return self.messages / self.accept_s if self.accept_s else 0.0


def run_load(server: Server, sink: Sink, case: str, user: str, size_kb: int, sessions: int, messages: int,
             timeout: float, profile_dir: Path | None = None) -> Result:
    """One measurement: smtp-source pushes `messages`, we wait until all of them arrived at the far end."""
    wait_until(server.queue_empty, timeout, f"{server.name}'s queue to drain before {case}")
    if case == "local":
        rcpt = f"{user}@{LOCAL_DOMAIN}"
        before = server.delivered(user)

        def arrived() -> int:
            return server.delivered(user) - before
    else:
        rcpt = RELAY_RCPT
        sink.ensure_running()
        before = sink.count

        def arrived() -> int:
            return sink.count - before

    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size_kb * 1024),
           "-M", "source.example", "-f", SENDER, "-t", rcpt, f"{server.address}:{server.port}"]
    profiler = None
    if profile_dir is not None and isinstance(server, MailfleetInstance):
        profiler = start_profile(server.pid, profile_dir / f"mailfleet-{case}-{size_kb}k-{sessions}s.svg")
    cpu_before = server.cpu_seconds() if isinstance(server, MailfleetInstance) else None
    start = time.monotonic()
    source = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = start + timeout
    accept_end = None
    errors = ""
    while True:
        now = time.monotonic()
        if accept_end is None and source.poll() is not None:
            accept_end = now
            out = source.stdout.read().decode(errors="replace") if source.stdout else ""
            if source.returncode != 0:
                errors = f"smtp-source exit {source.returncode}: {out.strip()[:300]}"
        if arrived() >= messages:
            end = now
            break
        if accept_end is not None and errors:
            end = now
            break
        if now > deadline:
            source.kill()
            errors = errors or f"timed out with {arrived()}/{messages} arrived"
            end = now
            break
        time.sleep(0.02)
    if accept_end is None:
        try:
            source.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            source.kill()
            source.wait()
        accept_end = time.monotonic()
    if profiler is not None:
        stop_profile(profiler)
    got = arrived()
    if got < messages and not errors:
        errors = f"only {got}/{messages} arrived"
    cpu = server.cpu_seconds() - cpu_before if isinstance(server, MailfleetInstance) and cpu_before is not None \
        else None
    return Result(server.name, case, size_kb, sessions, messages, accept_end - start, end - start, errors, cpu)


def start_profile(pid: int, svg: Path, subprocesses: bool = False) -> subprocess.Popen:
    """py-spy recording a flame graph of `pid` (with `subprocesses`, of its acceptors too) into `svg`, until
    stopped."""
    children = ["--subprocesses"] if subprocesses else []
    profiler = subprocess.Popen(["py-spy", "record", "--nonblocking", "--threads", *children, "-r", "200",
                                 "-o", str(svg), "--pid", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # py-spy attaches before the load starts
    return profiler


def stop_profile(profiler: subprocess.Popen) -> None:
    profiler.send_signal(signal.SIGINT)  # py-spy writes the graph on SIGINT
    with contextlib.suppress(subprocess.TimeoutExpired):
        profiler.wait(60)


def open_idle_sessions(address: str, port: int, count: int, timeout: float) -> tuple[list[socket.socket], int]:
    """Open `count` SMTP sessions and read each 220 banner; returns the sockets and how many got a banner."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    greeted = 0
    deadline = time.monotonic() + timeout
    pending_connect = 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect((address, port))
        socks.append(s)
        sel.register(s, selectors.EVENT_READ)
        pending_connect += 1
        if pending_connect >= 200:  # let the server keep up with the accept queue
            greeted += _read_banners(sel, 0.05)
            pending_connect = 0
    while greeted < count and time.monotonic() < deadline:
        greeted += _read_banners(sel, 0.2)
    sel.close()
    return socks, greeted


def _read_banners(sel: selectors.BaseSelector, wait: float) -> int:
    n = 0
    for key, _ in sel.select(wait):
        s = key.fileobj
        assert isinstance(s, socket.socket)
        try:
            data = s.recv(4096)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        sel.unregister(s)
        if data.startswith(b"220"):
            n += 1
    return n


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


# ---------------------------------------------------------------------------------------------- report


def print_table(results: list[Result]) -> None:
    keyed: dict[tuple, Result] = {}
    spread: dict[tuple, list[float]] = {}
    for r in results:  # best of the repeats; a failed measurement counts only if every repeat failed
        key = (r.server, r.case, r.size_kb, r.sessions)
        if not r.errors:
            spread.setdefault(key, []).append(r.rate)
        best = keyed.get(key)
        if best is None or (best.errors and not r.errors) or (not r.errors and r.rate > best.rate):
            keyed[key] = r
    cases = sorted({(r.case, r.size_kb, r.sessions) for r in results}, key=lambda c: (c[0] != "local", c[1], c[2]))
    header = (f"{'case':<44} {'msgs':>6} {'Postfix msg/s':>14} {'Mailfleet msg/s':>16} {'ratio MF/PF':>12}"
              f"   {'accept-only msg/s PF / MF':>26}")
    print(header)
    print("-" * len(header))
    for case, size_kb, sessions in cases:
        pf = keyed.get(("Postfix", case, size_kb, sessions))
        mf = keyed.get(("Mailfleet", case, size_kb, sessions))
        label = {"local": "queue + local Maildir (e2e)", "relay": "queue + relay to smtp-sink"}[case]
        label = f"{label}, {size_kb:>3} KB, {sessions:>2} sess"
        msgs = (pf or mf).messages if (pf or mf) else 0
        pf_rate = f"{pf.rate:,.0f}" if pf and not pf.errors else ("FAILED" if pf else "-")
        mf_rate = f"{mf.rate:,.0f}" if mf and not mf.errors else ("FAILED" if mf else "-")
        ratio = f"{mf.rate / pf.rate:.2f}x" if pf and mf and pf.rate and not pf.errors and not mf.errors else "-"
        acc = f"{pf.accept_rate:,.0f} / {mf.accept_rate:,.0f}" if pf and mf else "-"
        print(f"{label:<44} {msgs:>6} {pf_rate:>14} {mf_rate:>16} {ratio:>12}   {acc:>26}")
    print("(best of the repeats; every measurement:)")
    for (server, case, size_kb, sessions), rates in sorted(spread.items()):
        print(f"  {server:<9} {case:<5} {size_kb:>3} KB {sessions:>2} sessions: "
              + ", ".join(f"{x:,.0f}" for x in rates))
    for r in results:
        if r.errors:
            print(f"  ! {r.server} {r.case} {r.size_kb} KB {r.sessions} sessions: {r.errors}")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000, help="messages per measurement (default 2000)")
    p.add_argument("--sizes", default="1,100", help="message sizes in KB, comma separated (default 1,100)")
    p.add_argument("--sessions", default="10,50", help="parallel sessions, comma separated (default 10,50)")
    p.add_argument("--cases", default="local,relay", help="local, relay or both (default both)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per case and server; the best counts")
    p.add_argument("--idle", type=int, default=5000, help="concurrent idle sessions for the memory test (0: skip)")
    p.add_argument("--timeout", type=float, default=300, help="bound on each measurement, seconds (default 300)")
    p.add_argument("--only", choices=["postfix", "mailfleet"], help="run one server only")
    p.add_argument("--profile", type=Path, help="record a py-spy flame graph of Mailfleet per measurement here")
    p.add_argument("--mailfleet-src", type=Path, default=REPO,
                   help="run the `appliance` package found in this directory (A/B runs against another checkout)")
    p.add_argument("--smtp-workers", help="Mailfleet's smtp.workers setting (default: the config default)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, Maildirs) for inspection")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/smtp_throughput.py: run as root (Postfix's master must start as root)", file=sys.stderr)
        return 2
    for tool in ("postfix", "smtp-source", "smtp-sink", "postconf"):
        if shutil.which(tool) is None:
            print(f"bench/smtp_throughput.py: {tool} not found; apt-get install postfix", file=sys.stderr)
            return 2
    if args.profile is not None and shutil.which("py-spy") is None:
        print("bench/smtp_throughput.py: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    raise_nofile(20000)
    # SIGTERM (timeout(1), a CI limit) unwinds like an error, so the finally below stops Postfix and Mailfleet.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    session_counts = [int(s) for s in args.sessions.split(",") if s]
    cases = [c for c in args.cases.split(",") if c]
    plan = [(case, size, sess) for case in cases for size in sizes for sess in session_counts]
    # Every measurement gets a mailbox of its own, so no run delivers into a Maildir an earlier one filled.
    users = {(c, rep): f"case{i}r{rep}" for i, c in enumerate(plan) for rep in range(args.repeat)}
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="mailfleet-bench-"))
    os.chmod(tmp, 0o755)
    spread = spread_subdirectories(tmp)
    sink = Sink(SINK_ADDR)
    servers: list[Server] = []
    results: list[Result] = []
    memory: list[str] = []
    try:
        sink.start()
        if args.only != "postfix":
            servers.append(MailfleetInstance(server_dir(tmp, "mailfleet"), list(users.values()), sink,
                                             max_sessions=args.idle + 1000, src=args.mailfleet_src.resolve(),
                                             smtp_workers=args.smtp_workers))
        if args.only != "mailfleet":
            servers.append(PostfixInstance(server_dir(tmp, "postfix"), list(users.values()), sink,
                                           max_smtpd=max(args.idle + 100, 200)))
        print(f"bench: {os.cpu_count()} CPUs (load average now {os.getloadavg()[0]:.1f}), {args.messages} messages "
              f"per measurement, best of {args.repeat}, work dir {tmp}", flush=True)
        print(f"bench: {spread}", flush=True)
        for server in servers:
            print(f"bench: {server.name}: {filesystem_note(server.workdir)}", flush=True)
        for server in servers:
            server.setup()
            server.start()
        # Both servers run all along and take turns case by case (the order flipped every round), so a change
        # in the machine's other load hits both alike instead of whichever ran second.
        for case, size, sess in plan:
            for rep in range(args.repeat):
                for server in (servers if rep % 2 == 0 else servers[::-1]):
                    result = run_load(server, sink, case, users[((case, size, sess), rep)], size, sess,
                                      args.messages, args.timeout, args.profile)
                    results.append(result)
                    note = f"  ({result.errors})" if result.errors else ""
                    if result.cpu_s is not None:
                        note = f", {result.cpu_s * 1000 / args.messages:.2f} CPU ms/msg{note}"
                    print(f"  {server.name:<9} {case:<5} {size:>3} KB {sess:>2} sessions: {result.rate:8,.0f} msg/s "
                          f"end to end, {result.accept_rate:8,.0f} msg/s accepted{note}", flush=True)
        if args.idle:
            for server in servers:
                memory.append(idle_memory(server, args.idle, args.timeout))
                print(f"  {memory[-1]}", flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.stop()
        sink.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(results)
    if memory:
        print()
        print(f"Memory with {args.idle:,} concurrent idle SMTP sessions:")
        for line in memory:
            print(f"  {line}")
    return 1 if any(r.errors for r in results) else 0


SLOW_CREATION_US = 200  # a rested ext4 here: 20-80 us; right after another run: 400-1,000 us


def spread_subdirectories(directory: Path) -> str:
    """Give each server's tree block groups of its own, as on two machines: ext4's TOPDIR flag (chattr +T) on
    the work dir makes the allocator spread the directories made in it over the disk instead of keeping them
    beside their parent. It matters on ext4 without a journal, where a file creation passes over the inodes
    freed in its group during the last minutes: in one shared group, every measurement of Mailfleet (whose
    local and relay paths delete no file) started among the 2,000 queue files Postfix had just deleted."""
    try:
        done = subprocess.run(["chattr", "+T", str(directory)], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"servers' trees share the work dir's block groups (chattr: {exc.strerror})"
    if done.returncode != 0:
        return f"servers' trees share the work dir's block groups (chattr +T: {done.stderr.strip()})"
    return "servers' trees in block groups of their own (chattr +T on the work dir)"


def server_dir(parent: Path, name: str) -> Path:
    """A directory for one server under the work dir; a random name, so that the allocator's choice of its block
    group (from a hash of the name) does not land on the one an earlier run's clean-up has just emptied."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    os.chmod(path, 0o755)
    return path


def file_creation_us(directory: Path, files: int = 100) -> float:
    """Microseconds to create (and close) an empty file in ``directory``, the median of ``files``."""
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=directory))
    times = []
    try:
        for i in range(files):
            start = time.perf_counter()
            os.close(os.open(probe / str(i), os.O_CREAT | os.O_WRONLY, 0o600))
            times.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return sorted(times)[len(times) // 2] * 1e6


def filesystem_note(directory: Path) -> str:
    """A server's directory as it bears on the results: both servers create at least one file per message
    (Postfix its queue file, and the Maildir file; Mailfleet the spool file, or the Maildir file), and on ext4
    without a journal that creation gets slow after many deletions (see bench/README.md)."""
    from appliance.queue.spool import creation_skips_deleted_inodes

    micros = file_creation_us(directory)
    cost = f"creating a file there takes {micros:,.0f} us now"
    if not creation_skips_deleted_inodes(directory):
        return cost
    note = f"ext4 without a journal: {cost} (up to ~1,000 us after many deletions in its group in the last minute)"
    if micros > SLOW_CREATION_US:
        note += ("\nbench: NOTE: file creation is slow now (recently deleted inodes, e.g. an earlier run's clean-up): "
                 "this server will measure lower; for figures comparable with bench/README.md, wait five minutes")
    return note


def idle_memory(server: Server, count: int, timeout: float) -> str:
    """Open `count` idle sessions; Mailfleet: its processes' RSS (and peak); Postfix: its smtpd processes' sum."""
    if isinstance(server, MailfleetInstance):
        # A fresh process, so the peak (VmHWM) belongs to the idle sessions and not to the earlier load.
        server.stop()
        server.start()
        base = sum(proc_status(p).get("VmRSS", 0) for p in process_tree(server.pid))
        socks, greeted = open_idle_sessions(server.address, server.port, count, timeout)
        try:
            time.sleep(1.0)
            pids = process_tree(server.pid)
            rss = sum(proc_status(p).get("VmRSS", 0) for p in pids)
            peak = sum(proc_status(p).get("VmHWM", 0) for p in pids)
            pss = sum(proc_pss(p) for p in pids)
            return (f"Mailfleet: {greeted:,}/{count:,} sessions greeted; {len(pids)} process(es): RSS {mb(rss)}"
                    f" (peak {mb(peak)}, PSS {mb(pss)}; {mb(base)} before the sessions)")
        finally:
            close_all(socks)
    assert isinstance(server, PostfixInstance)
    socks, greeted = open_idle_sessions(server.address, server.port, count, timeout)
    try:
        time.sleep(1.0)
        procs, rss, pss = server.smtpd_memory()
        master = proc_status(server._master_pid()).get("VmRSS", 0)
        return (f"Postfix:   {greeted:,}/{count:,} sessions greeted; {procs:,} smtpd processes: summed RSS {mb(rss)},"
                f" summed PSS {mb(pss)} (shared pages counted once); master {mb(master)}")
    finally:
        close_all(socks)


if __name__ == "__main__":
    sys.exit(main())
