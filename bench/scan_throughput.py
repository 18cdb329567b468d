#!/usr/bin/env python3
"""Mailfleet against Postfix as a scanning incoming gateway: one clamd and one spamd, shared by both, in one run.

Postfix (a private instance, as bench/smtp_throughput.py runs it) asks Debian's clamav-milter and spamass-milter
(milter protocol 6, milter_default_action = tempfail); Mailfleet (role incoming_gateway) asks the same clamd and
spamd through its filters.scanners. Both forward to one smtp-sink. The load is this script's own SMTP client, one
message per session, which times each message from the end of its data (the final dot) to the 250: that time holds
every verdict, since both servers answer only after their scanners have. Messages: a clean 5 KB text and a 50 KB
message with a base64 attachment, each one different (clamd caches the hash of clean content).

Before measuring, each server is sent an EICAR attachment and a GTUBE message (both must be refused at the end of
data, with clamd and spamd having seen them) and one clean message, which must reach the sink with the scanners'
headers. During every measurement clamd's and spamd's logs must count a scan of every message; a server that does
not scan fails the run instead of measuring fast. Run as root (Postfix's master must start as root):

    .venv/bin/python bench/scan_throughput.py                    # or: make bench-scan
    .venv/bin/python bench/scan_throughput.py --messages 200 --kinds text --sessions 10 --repeat 1
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import smtp_load
from daemons import Daemon, LogCount
from runs import (
    add_common_options,
    best_of,
    conclude,
    failed,
    in_turns,
    nearest_rank,
    preflight,
    progress,
    stop_all,
)
from smtp_load import Sent
from smtp_throughput import (
    BenchError,
    MailfleetInstance,
    PostfixInstance,
    Sink,
    filesystem_note,
    raise_nofile,
    server_dir,
    spread_subdirectories,
    start_profile,
    stop_profile,
    wait_until,
)

ADDR = "127.0.0.1"
DOMAIN = "gw.example"  # the domain both gateways take mail for and forward to the sink
RCPT = f"someone@{DOMAIN}"
SENDER = "load@source.example"
KINDS = {"text": 5, "attachment": 50}  # message kind -> size in KB
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAM_REJECT = 15.0  # both servers refuse at this score (Mailfleet's default filters.spam.reject)


# ---------------------------------------------------------------------------------------------- messages

WORDS = ("the report for this quarter is attached please find the figures we discussed at the meeting on "
         "tuesday and let me know if anything looks wrong before friday when we send it to the board our team "
         "has reviewed the numbers twice and the budget for next year depends on them thanks again for your "
         "help with the schedule we will meet in the small room after lunch to go through the open points "
         "regards").split()


def office_text(rnd: random.Random, size: int) -> str:
    """Plain English-looking lines of about `size` bytes (word salad from an office mail, not spam-like)."""
    lines, total = [], 0
    while total < size:
        line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 13))).capitalize() + "."
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def _headers(i: int, subject: str, content_type: str) -> str:
    return (f"From: Load Source <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: {subject} {i}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: <{i}.bench@source.example>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n")


def _attachment(name: str, mime: str, data: bytes) -> str:
    encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (f"Content-Type: {mime}; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n{encoded}")


def _pdf_like(rnd: random.Random, size: int) -> bytes:
    """A PDF skeleton around random bytes: clamd's PDF parser walks it, nothing decompresses."""
    head = b"%%PDF-1.4\n1 0 obj\n<< /Length %d >>\nstream\n" % size
    return head + rnd.randbytes(size) + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def make_message(kind: str, i: int, round_: str = "") -> bytes:
    """Message `i` of a kind and a round, its text and attachment different from every other message's: clamd
    caches the hash of each clean part it scanned, and would answer a repeated one from memory."""
    rnd = random.Random(f"{kind}-{i}-{round_}")
    if kind == "text":
        body = office_text(rnd, KINDS["text"] * 1024 - 300)
        return (_headers(i, "Minutes", "text/plain; charset=utf-8") + "\r\n" + body).encode()
    boundary = f"=-bench-{i}"
    text = office_text(rnd, 2500)
    binary = _pdf_like(rnd, (KINDS["attachment"] * 1024 - 3300) * 3 // 4)
    return (_headers(i, "Quarterly report", f"multipart/mixed; boundary=\"{boundary}\"") + "\r\n"
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
            f"--{boundary}\r\n{_attachment(f'report-{i}.pdf', 'application/pdf', binary)}"
            f"--{boundary}--\r\n").encode()


def eicar_message() -> bytes:
    boundary = "=-bench-eicar"
    return (_headers(0, "Virus test", f"multipart/mixed; boundary=\"{boundary}\"") + "\r\n"
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nThe attachment is the EICAR test file.\r\n"
            f"--{boundary}\r\n{_attachment('eicar.com', 'application/octet-stream', EICAR)}"
            f"--{boundary}--\r\n").encode()


def gtube_message() -> bytes:
    return (_headers(0, "Spam test", "text/plain") + f"\r\nThis is the GTUBE:\r\n{GTUBE}\r\n").encode()


# ---------------------------------------------------------------------------------------------- the client


def run_client(address: str, port: int, messages: list[bytes], sessions: int, timeout: float) -> list[Sent]:
    return smtp_load.run_client(address, port, messages, sessions, timeout, rcpt=RCPT, sender=SENDER)


# ---------------------------------------------------------------------------------------------- the scanners


def _debian_conf(path: Path, drop: set[str], add: dict[str, str]) -> str:
    """Debian's config file for a ClamAV program (`Key value` lines) without the `drop` keys, plus `add`."""
    if not path.exists():
        raise BenchError(f"{path} not found: apt-get install clamav-daemon clamav-milter")
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#") and line.split()[0] not in drop | set(add)]
    return "\n".join(keep + [f"{k} {v}" for k, v in add.items()]) + "\n"


class Clamd(Daemon):
    """Debian's clamd with its clamd.conf, but on a loopback TCP port and with the signature DB the bench builds:
    the EICAR signature and `signatures` random body signatures (.ndb), so that every scan runs the matcher
    over a real number of patterns. LogClean is on: its log counts every scan."""

    name = "clamd"

    def __init__(self, workdir: Path, signatures: int) -> None:
        super().__init__(workdir)
        self.db = workdir / "db"
        self.signatures = signatures
        self.logfile = workdir / "clamd.log"
        self.scans = LogCount(self.logfile, {"clean": lambda line: line.endswith(": OK"),
                                             "found": lambda line: line.endswith(" FOUND")})

    def setup(self) -> None:
        self.db.mkdir()
        rnd = random.Random(14)
        with (self.db / "bench.ndb").open("w") as f:  # name:target:offset:hex (clamav signatures.md, "ndb")
            f.write(f"Bench.EICAR:0:*:{EICAR.hex()}\n")
            for i in range(self.signatures):
                f.write(f"Bench.Random.{i}:0:*:{rnd.randbytes(rnd.randint(12, 32)).hex()}\n")
        conf = _debian_conf(Path("/etc/clamav/clamd.conf"),
                            drop={"LocalSocket", "LocalSocketGroup", "LocalSocketMode", "FixStaleSocket", "User",
                                  "LogRotate", "LogFileMaxSize"},
                            add={"TCPSocket": str(self.port), "TCPAddr": ADDR, "DatabaseDirectory": str(self.db),
                                 "LogFile": str(self.logfile), "LogClean": "yes", "Foreground": "yes",
                                 "PidFile": str(self.workdir / "clamd.pid"), "TemporaryDirectory": str(self.workdir)})
        (self.workdir / "clamd.conf").write_text(conf)

    def command(self) -> list[str]:
        return ["/usr/sbin/clamd", "--config-file", str(self.workdir / "clamd.conf")]

    def ready(self) -> bool:
        """clamd listens only once its DB is loaded; PING must answer PONG (clamd(8), "zCOMMAND")."""
        try:
            with socket.create_connection((ADDR, self.port), timeout=2) as s:
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False


class Spamd(Daemon):
    """Debian's spamd with the rules the package ships (no sa-update), no network tests (--local, no DNS), no
    Bayes, `children` preforked children (Debian's /etc/default/spamd: 5), as user nobody. Its site config is
    Debian's (the .pre files that load the plugins, local.cf) plus bench.cf."""

    name = "spamd"

    def __init__(self, workdir: Path, children: int) -> None:
        super().__init__(workdir)
        self.children = children
        self.site = workdir / "site"
        self.logfile = workdir / "spamd.log"
        self.scans = LogCount(self.logfile, {"checked": lambda line: "spamd: result: " in line,
                                             "spam": lambda line: "spamd: result: Y " in line})

    def setup(self) -> None:
        if not Path("/etc/spamassassin").is_dir():
            raise BenchError("/etc/spamassassin not found: apt-get install spamassassin spamd")
        self.site.mkdir()
        for f in Path("/etc/spamassassin").iterdir():
            if f.suffix in (".pre", ".cf") and f.is_file():
                shutil.copy(f, self.site / f.name)
        (self.site / "zz-bench.cf").write_text("use_bayes 0\nbayes_auto_learn 0\ndns_available no\n")
        home = self.workdir / "home"
        home.mkdir()
        shutil.chown(home, "nobody")

    def command(self) -> list[str]:
        return ["/usr/sbin/spamd", "--listen", f"{ADDR}:{self.port}", "--max-children", str(self.children),
                "--min-children", str(self.children), "--local", "--username", "nobody", "--nouser-config",
                f"--helper-home-dir={self.workdir / 'home'}", "--siteconfigpath", str(self.site),
                "-s", str(self.logfile), "--pidfile", str(self.workdir / "spamd.pid")]

    def ready(self) -> bool:
        """spamd answers PING with PONG (the spamd protocol, SPAMC/1.5) once it has loaded the rules."""
        try:
            with socket.create_connection((ADDR, self.port), timeout=5) as s:
                s.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in s.recv(64)
        except OSError:
            return False


class ClamavMilter(Daemon):
    """Debian's clamav-milter with its config, on a loopback port, asking `clamd`; OnInfected Reject (Debian's
    default is Quarantine, Postfix's hold queue) as Mailfleet's virus_action reject; AddHeader Replace as Debian's."""

    name = "clamav-milter"

    def __init__(self, workdir: Path, clamd: Clamd) -> None:
        super().__init__(workdir)
        self.clamd = clamd

    def setup(self) -> None:
        conf = _debian_conf(Path("/etc/clamav/clamav-milter.conf"),
                            drop={"MilterSocketGroup", "MilterSocketMode", "FixStaleSocket", "User", "LogRotate",
                                  "LogFileMaxSize"},
                            add={"MilterSocket": f"inet:{self.port}@{ADDR}",
                                 "ClamdSocket": f"tcp:{ADDR}:{self.clamd.port}", "Foreground": "yes",
                                 "OnInfected": "Reject", "PidFile": str(self.workdir / "clamav-milter.pid"),
                                 "LogFile": str(self.workdir / "clamav-milter.log"),
                                 "TemporaryDirectory": str(self.workdir)})
        (self.workdir / "clamav-milter.conf").write_text(conf)

    def command(self) -> list[str]:
        return ["/usr/sbin/clamav-milter", "--config-file", str(self.workdir / "clamav-milter.conf")]


class SpamassMilter(Daemon):
    """Debian's spamass-milter on a loopback port; it runs spamc (to `spamd`) for each message. -m: headers only,
    no rewriting of body or Subject (Mailfleet only adds headers); -r: refuse at the score Mailfleet refuses at."""

    name = "spamass-milter"

    def __init__(self, workdir: Path, spamd: Spamd) -> None:
        super().__init__(workdir)
        self.spamd = spamd

    def setup(self) -> None:
        pass

    def command(self) -> list[str]:
        return ["/usr/sbin/spamass-milter", "-p", f"inet:{self.port}@{ADDR}", "-m", "-r", f"{SPAM_REJECT:g}",
                "-P", str(self.workdir / "spamass-milter.pid"), "--", "-d", ADDR, "-p", str(self.spamd.port)]


# ---------------------------------------------------------------------------------------------- the gateways


class PostfixGateway(PostfixInstance):
    """The private Postfix relaying DOMAIN to the sink, with both milters before its 250 (milter protocol 6,
    milter_default_action = tempfail: a milter down is a 451, as Mailfleet's on_error tempfail)."""

    def __init__(self, workdir: Path, sink: Sink, clamav: ClamavMilter, spamass: SpamassMilter,
                 max_smtpd: int) -> None:
        milters = f"inet:{ADDR}:{clamav.port}, inet:{ADDR}:{spamass.port}"
        super().__init__(workdir, [], sink, max_smtpd, main_cf={
            "relay_domains": DOMAIN, "smtpd_milters": milters, "milter_protocol": "6",
            "milter_default_action": "tempfail"})
        self.milters = (clamav, spamass)

    def mta_cpu(self) -> tuple[float, float]:
        """(Postfix's processes, the two milters with the spamc processes spamass-milter runs)."""
        return self.cpu_seconds(), sum(m.cpu_seconds() for m in self.milters)


class MailfleetGateway(MailfleetInstance):
    """`mailfleet serve` as the incoming gateway for DOMAIN, forwarding to the sink, scanning with both daemons."""

    def __init__(self, workdir: Path, sink: Sink, clamd: Clamd, spamd: Spamd, src: Path,
                 smtp_workers: str | None) -> None:
        super().__init__(workdir, [], sink, max_sessions=1000, src=src, smtp_workers=smtp_workers, roles_config={
            "roles": ["incoming_gateway"],
            "incoming_gateway": {"domains": {DOMAIN: {"destinations": [f"{sink.address}:{sink.port}"]}}},
            "filters": {"scanners": [{"type": "clamav", "address": f"{ADDR}:{clamd.port}"},
                                     {"type": "spamassassin", "address": f"{ADDR}:{spamd.port}"}],
                        "spam": {"reject": SPAM_REJECT}},
        })

    def mta_cpu(self) -> tuple[float, float]:
        return self.cpu_seconds(), 0.0


Gateway = PostfixGateway | MailfleetGateway


# ---------------------------------------------------------------------------------------------- the checks


def verify_scanning(gw: Gateway, sink: Sink, clamd: Clamd, spamd: Spamd, dump: Path, timeout: float) -> str:
    """Prove that `gw` has both scanners in its path before its 250: EICAR and GTUBE refused at the end of data
    with clamd and spamd having seen them, and a clean message at the sink with spam and virus headers. Returns
    the scanners' headers the clean message arrived with; raises BenchError naming what is missing."""

    def sent_and_counted(message: bytes, seen: Callable[[dict[str, int], dict[str, int]], bool]
                         ) -> tuple[Sent, dict[str, int], dict[str, int]]:
        clam, spam = clamd.scans.read(), spamd.scans.read()
        sent = run_client(gw.address, gw.port, [message], 1, timeout)[0]

        def deltas() -> tuple[dict[str, int], dict[str, int]]:
            return _delta(clamd.scans.read(), clam), _delta(spamd.scans.read(), spam)

        # A daemon logs a scan just after answering it: a moment's wait for the line, then the check below.
        with contextlib.suppress(BenchError):
            wait_until(lambda: seen(*deltas()), 5, "the scan in the daemons' logs", interval=0.1)
        return sent, *deltas()

    sent, clam, _ = sent_and_counted(eicar_message(), lambda c, s: c["found"] >= 1)
    if not sent.reply.startswith("5") or clam["found"] != 1:
        raise BenchError(f"{gw.name} does not scan with clamd: the EICAR message got {sent.reply!r}, "
                         f"clamd found {clam['found']} virus(es)")
    sent, _, spam = sent_and_counted(gtube_message(), lambda c, s: s["spam"] >= 1)
    if not sent.reply.startswith("5") or spam["spam"] != 1:
        raise BenchError(f"{gw.name} does not scan with spamd: the GTUBE message got {sent.reply!r}, "
                         f"spamd counted {spam['spam']} spam")
    before = set(dump.iterdir())
    sent, clam, spam = sent_and_counted(make_message("text", 0), lambda c, s: c["clean"] >= 1 and s["checked"] >= 1)
    if not sent.accepted or clam["clean"] != 1 or spam["checked"] != 1:
        raise BenchError(f"{gw.name}: the clean message got {sent.reply!r}; clamd counted {clam['clean']} clean, "
                         f"spamd {spam['checked']} checked (want 250, 1, 1)")
    wait_until(lambda: set(dump.iterdir()) - before, timeout, f"{gw.name}'s clean message at the sink")
    arrived = (set(dump.iterdir()) - before).pop()
    headers = arrived.read_bytes().split(b"\r\n\r\n" if b"\r\n\r\n" in arrived.read_bytes() else b"\n\n")[0]
    found = [h for h in headers.decode(errors="replace").splitlines()
             if h.lower().startswith(("x-spam-", "x-virus-", "x-mailfleet-"))]
    if not any(h.lower().startswith("x-spam-") for h in found):
        raise BenchError(f"{gw.name}: the clean message reached the sink without an X-Spam- header ({arrived})")
    return "; ".join(h.strip()[:90] for h in found)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


# ---------------------------------------------------------------------------------------------- the runs


@dataclass
class Result:
    server: str
    kind: str
    sessions: int
    messages: int
    total_s: float = 0.0  # from the first connection until the sink has counted every message
    accept_s: float = 0.0  # until the last 250
    latencies: list[float] = field(default_factory=list)  # final dot -> 250, seconds
    mta_cpu: float = 0.0  # the MTA's own processes (Mailfleet; Postfix's)
    milter_cpu: float = 0.0  # Postfix only: clamav-milter, spamass-milter and its spamc processes
    clamd_cpu: float = 0.0
    spamd_cpu: float = 0.0
    errors: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.total_s if self.total_s and not self.errors else 0.0

    def percentile(self, p: float) -> float:
        return nearest_rank(self.latencies, p)

    def per_msg(self, seconds: float) -> float:
        return seconds * 1000 / self.messages


def measure(gw: Gateway, sink: Sink, clamd: Clamd, spamd: Spamd, kind: str, sessions: int, messages: list[bytes],
            timeout: float, profile: Path | None) -> Result:
    result = Result(gw.name, kind, sessions, len(messages))
    wait_until(gw.queue_empty, timeout, f"{gw.name}'s queue to drain before {kind} x{sessions}")
    sink.ensure_running()
    arrived_before = sink.count
    clam, spam = clamd.scans.read(), spamd.scans.read()
    profiler = None
    if profile is not None and isinstance(gw, MailfleetGateway):
        profiler = start_profile(gw.pid, profile / f"mailfleet-scan-{kind}-{sessions}s.svg", subprocesses=True)
    cpu = (gw.mta_cpu(), clamd.cpu_seconds(), spamd.cpu_seconds())
    start = time.monotonic()
    try:
        sent = run_client(gw.address, gw.port, messages, sessions, timeout)
        result.accept_s = time.monotonic() - start
        refused = [s.reply for s in sent if not s.accepted]
        if refused:
            result.errors = f"{len(refused)} not accepted, e.g. {refused[0]!r}"
        else:
            wait_until(lambda: sink.count - arrived_before >= len(messages), timeout,
                       f"{gw.name}: all messages at the sink ({sink.count - arrived_before}/{len(messages)})", 0.02)
        result.total_s = time.monotonic() - start
        result.latencies = [s.latency for s in sent if s.accepted]
    except BenchError as exc:
        result.errors = str(exc)
    finally:
        if profiler is not None:
            stop_profile(profiler)
    (mta, milters), clamd_cpu, spamd_cpu = gw.mta_cpu(), clamd.cpu_seconds(), spamd.cpu_seconds()
    result.mta_cpu, result.milter_cpu = mta - cpu[0][0], milters - cpu[0][1]
    result.clamd_cpu, result.spamd_cpu = clamd_cpu - cpu[1], spamd_cpu - cpu[2]
    # Every message must have been scanned by both daemons: a gateway that skips a scanner fails here. (A daemon
    # logs a scan just after answering it: a moment's wait for the last lines.)
    def scanned() -> tuple[int, int]:
        return sum(_delta(clamd.scans.read(), clam).values()), _delta(spamd.scans.read(), spam)["checked"]

    if not result.errors:
        try:
            wait_until(lambda: min(scanned()) >= len(messages), 10, "the scanners to log every scan", 0.1)
        except BenchError:
            result.errors = (f"not every message was scanned: clamd logged {scanned()[0]}, spamd {scanned()[1]} "
                             f"scans of {len(messages)} messages")
    return result


# ---------------------------------------------------------------------------------------------- report


def _section(title: str, results: list[Result], row: Callable[[Result | None, Result | None], str]) -> None:
    """One table: a row per case, `row` formatting the best Postfix and Mailfleet measurements of it."""
    keyed = best_of(results, lambda r: (r.server, r.kind, r.sessions))
    print(title)
    print("-" * len(title))
    for kind, sessions in sorted({(r.kind, r.sessions) for r in results}, key=lambda c: (KINDS[c[0]], c[1])):
        label = f"{KINDS[kind]:>2} KB {kind:<10} {sessions:>2} sessions"
        print(f"{label:<28} {row(keyed.get(('Postfix', kind, sessions)), keyed.get(('Mailfleet', kind, sessions)))}")


def _speed(pf: Result | None, mf: Result | None) -> str:
    ratio = f"{mf.rate / pf.rate:.2f}x" if pf and mf and pf.rate and mf.rate else "-"
    return (f"{_rate(pf):>9} {_rate(mf):>9} {ratio:>6}   {_pair(pf, mf, lambda r: r.percentile(50)):>15} "
            f"{_pair(pf, mf, lambda r: r.percentile(99)):>15}")


def _cpu(pf: Result | None, mf: Result | None) -> str:
    left = (f"{pf.per_msg(pf.mta_cpu):>8.2f} {pf.per_msg(pf.milter_cpu):>8.2f} {pf.per_msg(pf.clamd_cpu):>7.2f} "
            f"{pf.per_msg(pf.spamd_cpu):>7.2f}") if pf else f"{'-':>8} {'-':>8} {'-':>7} {'-':>7}"
    right = (f"{mf.per_msg(mf.mta_cpu):>9.2f} {mf.per_msg(mf.clamd_cpu):>7.2f} {mf.per_msg(mf.spamd_cpu):>7.2f}"
             if mf else f"{'-':>9} {'-':>7} {'-':>7}")
    return f"{left}   {right}"


def print_table(results: list[Result]) -> None:
    _section(f"{'case':<28} {'PF msg/s':>9} {'MF msg/s':>9} {'MF/PF':>6}   {'p50 ms PF / MF':>15} "
             f"{'p99 ms PF / MF':>15}", results, _speed)
    print()
    _section(f"{'CPU ms per message':<28} {'Postfix':>8} {'milters':>8} {'clamd':>7} {'spamd':>7}   "
             f"{'Mailfleet':>9} {'clamd':>7} {'spamd':>7}", results, _cpu)
    print("(best of the repeats; every measurement, msg/s:)")
    runs: dict[tuple[str, str, int], list[str]] = {}
    for r in results:
        runs.setdefault((r.server, r.kind, r.sessions), []).append(_rate(r))
    for (server, kind, sessions), rates in sorted(runs.items()):
        print(f"  {server:<9} {kind:<10} {sessions:>2} sessions: {', '.join(rates)}")
    for r in results:
        if r.errors:
            print(f"  ! {r.server} {r.kind} {r.sessions} sessions: {r.errors}")


def _rate(r: Result | None) -> str:
    return "-" if r is None else ("FAILED" if r.errors else f"{r.rate:,.1f}")


def _pair(pf: Result | None, mf: Result | None, value: Callable[[Result], float]) -> str:
    def one(r: Result | None) -> str:
        return "-" if r is None or r.errors else f"{value(r):,.0f}"
    return f"{one(pf)} / {one(mf)}"


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, messages=300, timeout=600)
    p.add_argument("--kinds", default="text,attachment", help="text (5 KB), attachment (50 KB), comma separated")
    p.add_argument("--signatures", type=int, default=100_000, help="random body signatures in clamd's DB")
    p.add_argument("--spamd-children", type=int, default=4, help="spamd's preforked children (default 4)")
    p.add_argument("--profile", type=Path, help="record a py-spy flame graph of Mailfleet per measurement here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    me = "bench/scan_throughput.py"
    tools = ("postfix", "postconf", "smtp-sink", "/usr/sbin/clamd", "/usr/sbin/clamav-milter", "/usr/sbin/spamd",
             "/usr/sbin/spamass-milter", "spamc")
    refused = preflight(me, "Postfix's master must start as root", tools,
                        "postfix clamav-daemon clamav-milter spamd spamc spamass-milter")
    if refused is not None:
        return refused
    if args.profile is not None and shutil.which("py-spy") is None:
        print(f"{me}: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in KINDS for k in kinds):
        print(f"{me}: --kinds: expected some of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    session_counts = [int(s) for s in args.sessions.split(",") if s]
    raise_nofile(20000)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))  # unwinds, so the finally stops everything
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="mailfleet-scan-bench-"))
    os.chmod(tmp, 0o755)
    spread = spread_subdirectories(tmp)
    scanners_dir = server_dir(tmp, "scanners")
    clamd = Clamd(scanners_dir, args.signatures)
    spamd = Spamd(scanners_dir, args.spamd_children)
    milters = (ClamavMilter(scanners_dir, clamd), SpamassMilter(scanners_dir, spamd))
    sink = Sink(ADDR)
    dump = tmp / "sink-dump"
    dump.mkdir()
    shutil.chown(dump, "nobody")
    gateways: list[Gateway] = []
    results: list[Result] = []
    started: list[Any] = []
    try:
        print(f"bench: {os.cpu_count()} CPUs (load average now {os.getloadavg()[0]:.1f}), {args.messages} messages "
              f"per measurement, best of {args.repeat}; clamd with {args.signatures:,} random body signatures + "
              f"EICAR, spamd with {args.spamd_children} children; work dir {tmp}", flush=True)
        print(f"bench: {spread}", flush=True)
        for daemon in (clamd, spamd):
            daemon.setup()
            daemon.start()
            started.append(daemon)
        sink.start(dump)
        started.append(sink)
        if args.only != "postfix":
            gateways.append(MailfleetGateway(server_dir(tmp, "mailfleet"), sink, clamd, spamd,
                                             args.mailfleet_src.resolve(), args.smtp_workers))
        if args.only != "mailfleet":
            for milter in milters:
                milter.setup()
                milter.start()
                started.append(milter)
            gateways.append(PostfixGateway(server_dir(tmp, "postfix"), sink, *milters, max_smtpd=200))
        for gw in gateways:
            print(f"bench: {gw.name}: {filesystem_note(gw.workdir)}", flush=True)
            gw.setup()
            gw.start()
            started.append(gw)
        for gw in gateways:
            print(f"bench: {gw.name} scans (EICAR and GTUBE refused, clean mail passed); at the sink: "
                  f"{verify_scanning(gw, sink, clamd, spamd, dump, args.timeout)}", flush=True)
        sink.stop()
        sink.start()  # measurements without writing each message to a file
        for kind in kinds:
            for sessions in session_counts:
                for rep, gw in in_turns(gateways, args.repeat):  # each measurement has messages of its own
                    batch = [make_message(kind, i, f"{gw.name}-{sessions}-{rep}") for i in range(1, args.messages + 1)]
                    r = measure(gw, sink, clamd, spamd, kind, sessions, batch, args.timeout, args.profile)
                    results.append(r)
                    progress(f"{gw.name:<9} {KINDS[kind]:>2} KB {kind:<10} {sessions:>2} sessions", r,
                             f"{r.per_msg(r.mta_cpu):.2f} MTA + {r.per_msg(r.milter_cpu):.2f} milters, clamd "
                             f"{r.per_msg(r.clamd_cpu):.2f}, spamd {r.per_msg(r.spamd_cpu):.2f}")
    except BenchError as exc:
        return failed(exc)
    finally:
        stop_all(started, tmp, args.keep)
    return conclude(results, print_table)


if __name__ == "__main__":
    sys.exit(main())
