#!/usr/bin/env python3
"""What screening and sender authentication cost: Mailfleet against Postfix relaying signed mail, with and
without the checks, in one run.

With the checks, Mailfleet (role incoming_gateway) runs its DNSBL screening on two zones and SPF, DKIM and DMARC
(`screening.dnsbl`, `sender_auth`); Postfix runs postscreen with the same two zones and Debian's OpenDKIM (verify
mode) and OpenDMARC (its own SPF check, RejectFailures) as milters. Without, both only relay. All four relay to one
smtp-sink. The DNS is real and the same for all: a BIND (tests/peers/named.py) on 127.0.0.1 port 53, primary
for the signing domain (SPF, DKIM key, DMARC p=reject) and the load's reverse zone, forwarding the two DNSBL
zones to an rbldnsd. Postfix and its milters read /etc/resolv.conf, which names no port: they run in a mount
namespace of their own where a bind mount makes it name that BIND; Mailfleet is told it in its `dns` section.

Every message is DKIM-signed (rsa-sha256, 2048 bits) by sender.example, sent from one of 240 loopback addresses
(127.0.37.10-249, each with forward-confirmed reverse DNS), one message per session. Before measuring, each
checking server must refuse a client listed in both zones and a message failing DMARC, and pass a signed one with
dkim=pass and dmarc=pass in its Authentication-Results. Run as root (Postfix's master must start as root; the
system Postfix is stopped first by `make bench-auth`):

    .venv/bin/python bench/auth_throughput.py                    # or: make bench-auth
    .venv/bin/python bench/auth_throughput.py --messages 300 --sessions 10 --repeat 1
    .venv/bin/python bench/auth_throughput.py --only postfix     # the Postfix side alone
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dkim
import dns.exception
import dns.message
import dns.query
import runs
from daemons import ADDR, Daemon
from scan_throughput import office_text
from smtp_load import Sent, run_client
from smtp_throughput import (
    REPO,
    BenchError,
    MailfleetInstance,
    PostfixInstance,
    Sink,
    filesystem_note,
    proc_cpu_seconds,
    raise_nofile,
    server_dir,
    spread_subdirectories,
    terminate,
    wait_until,
)

sys.path.insert(0, str(REPO / "tests"))
from peers.named import start_named  # noqa: E402 - tests/ is on the path only from here

DNS_ADDR = "127.0.0.1"  # the BIND everyone asks, on port 53 (the only port resolv.conf can name; BIND listens
# only on addresses an interface has, and loopback has 127.0.0.1)
SOURCES = [f"127.0.37.{i}" for i in range(10, 250)]  # the load's client addresses
LISTED = "127.0.37.5"  # listed in both DNSBL zones
ZONES = ("bl1.dnsbl.example", "bl2.dnsbl.example")
DOMAIN = "gw.example"  # relayed to the sink by all four
RCPT = f"someone@{DOMAIN}"
SIGNER = "sender.example"  # the sending domain: SPF, DKIM key, DMARC p=reject in the BIND zone
SELECTOR = "bench"
SENDER = f"news@{SIGNER}"
HELO = f"mta.{SIGNER}"
MF_AUTHSERV = "mf-checks.bench.example"
PF_AUTHSERV = "pf-checks.bench.example"
SIZE_KB = 5


# ---------------------------------------------------------------------------------------------- DNS


def reverse_zone() -> str:
    return "".join(f"{i} IN PTR h{i}.{SIGNER}.\n" for i in range(1, 255))


def signer_zone(key_record: str) -> str:
    spf = '"v=spf1 ip4:127.0.37.0/24 -all"'
    hosts = "".join(f"h{i} IN A 127.0.37.{i}\n" for i in range(1, 255))
    return (f"@ IN TXT {spf}\nmta IN A 127.0.37.10\nmta IN TXT {spf}\n_dmarc IN TXT \"v=DMARC1; p=reject\"\n"
            f"{key_record}\n{hosts}")


class Rbldnsd(Daemon):
    """Debian's rbldnsd serving both DNSBL zones (ip4set) on a loopback UDP port; LISTED and 127.0.0.2 listed."""

    name = "rbldnsd"

    def setup(self) -> None:
        self.zones = self.workdir / "rbl"
        self.zones.mkdir()
        for zone in ZONES:
            (self.zones / f"{zone}.txt").write_text(f":127.0.0.2:Listed in {zone}\n127.0.0.2\n{LISTED}\n")
        os.chmod(self.zones, 0o755)

    def command(self) -> list[str]:
        return ["rbldnsd", "-n", "-u", "nobody", "-b", f"{ADDR}/{self.port}", "-r", str(self.zones), "-t", "5m",
                *(f"{zone}:ip4set:{zone}.txt" for zone in ZONES)]

    def ready(self) -> bool:
        name = ".".join(reversed(LISTED.split("."))) + "." + ZONES[0]
        try:
            reply = dns.query.udp(dns.message.make_query(name, "A"), ADDR, port=self.port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            return False
        return bool(reply.answer)


class ResolvNamespace:
    """A mount namespace in which /etc/resolv.conf names DNS_ADDR: Postfix and the milters resolve through the
    bench's BIND there, and the host's resolver stays as it is. A `sleep` holds the namespace; `prefix` enters it."""

    def __init__(self, workdir: Path) -> None:
        self.conf = workdir / "resolv.conf"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.conf.write_text(f"nameserver {DNS_ADDR}\noptions timeout:2 attempts:1\n")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                                      f"mount --bind {self.conf} /etc/resolv.conf && exec sleep infinity"])

        def mounted() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"unshare/mount failed (exit {self.proc.returncode}): the bench needs root and "
                                 "mount namespaces")
            seen = subprocess.run([*self.prefix, "cat", "/etc/resolv.conf"], capture_output=True, text=True)
            return DNS_ADDR in seen.stdout

        wait_until(mounted, 10, "the resolv.conf namespace", interval=0.1)

    @property
    def prefix(self) -> list[str]:
        assert self.proc is not None
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--"]

    def stop(self) -> None:
        terminate(self.proc, 5)


# ---------------------------------------------------------------------------------------------- the milters


class Milter(Daemon):
    """A milter on a Unix socket in its work dir, as Debian sets them up (local:/run/opendkim/opendkim.sock): over
    loopback TCP, libmilter's small writes meet delayed ACKs and every message waited some 130 ms more."""

    @property
    def socket_path(self) -> Path:
        return self.workdir / f"{self.name}.sock"

    def own_dir(self) -> None:
        """The milter drops root for a user of its own (UserID), which makes its socket in the work dir."""
        shutil.chown(self.workdir, self.name)

    def ready(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.socket_path))
            except OSError:
                return False
        return True


class OpenDKIM(Milter):
    """Debian's opendkim in verify mode (Mode v), asking the bench's BIND (libunbound, `Nameservers`)."""

    name = "opendkim"

    def setup(self) -> None:
        conf = {"Mode": "v", "Socket": f"local:{self.socket_path}", "UMask": "000", "Nameservers": DNS_ADDR,
                "AuthservID": PF_AUTHSERV, "PidFile": str(self.workdir / "opendkim.pid"), "UserID": "opendkim",
                "Background": "no", "Syslog": "no"}
        self.own_dir()
        (self.workdir / "opendkim.conf").write_text("".join(f"{k} {v}\n" for k, v in conf.items()))

    def command(self) -> list[str]:
        return ["/usr/sbin/opendkim", "-f", "-x", str(self.workdir / "opendkim.conf")]


class OpenDMARC(Milter):
    """Debian's opendmarc: DMARC from OpenDKIM's Authentication-Results and its own SPF check (SPFSelfValidate),
    refusing p=reject failures (RejectFailures), the organisational domain from Debian's public suffix list."""

    name = "opendmarc"

    def setup(self) -> None:
        conf = {"Socket": f"local:{self.socket_path}", "UMask": "000", "AuthservID": PF_AUTHSERV,
                "TrustedAuthservIDs": PF_AUTHSERV,
                "RejectFailures": "true", "SPFSelfValidate": "true", "SPFIgnoreResults": "true",
                "PublicSuffixList": "/usr/share/publicsuffix/public_suffix_list.dat",
                "PidFile": str(self.workdir / "opendmarc.pid"), "UserID": "opendmarc", "Background": "false",
                "Syslog": "false"}
        self.own_dir()
        (self.workdir / "opendmarc.conf").write_text("".join(f"{k} {v}\n" for k, v in conf.items()))

    def command(self) -> list[str]:
        return ["/usr/sbin/opendmarc", "-f", "-c", str(self.workdir / "opendmarc.conf")]


# ---------------------------------------------------------------------------------------------- the servers


class PostfixRelay(PostfixInstance):
    """The private Postfix relaying DOMAIN to the sink, in the resolv.conf namespace (smtpd looks up each client's
    name there); with `milters`, postscreen (both zones, weight 1 each, threshold 1, enforce) in front of smtpd
    and the milters before its 250."""

    def __init__(self, workdir: Path, sink: Sink, max_smtpd: int, milters: tuple[OpenDKIM, OpenDMARC] | None,
                 namespace: ResolvNamespace) -> None:
        main_cf = {"relay_domains": DOMAIN, "mynetworks": "127.0.0.1/32"}
        if milters is not None:
            main_cf.update({
                "postscreen_dnsbl_sites": ", ".join(f"{zone}*1" for zone in ZONES),
                "postscreen_dnsbl_threshold": "1", "postscreen_dnsbl_action": "enforce",
                "postscreen_access_list": "",  # the default, permit_mynetworks, would wave loopback through
                # No pregreet test (Mailfleet's screening.pregreet is off by default too): without a greet banner
                # postscreen ends the greet wait as soon as the DNSBL answers are in (postscreen_tests.c).
                "postscreen_greet_banner": "",
                "smtpd_milters": ", ".join(f"unix:{m.socket_path}" for m in milters),
                "milter_protocol": "6", "milter_default_action": "tempfail"})
        super().__init__(workdir, [], sink, max_smtpd, main_cf=main_cf)
        self.milters = milters
        self.prefix = namespace.prefix
        if milters is not None:
            self.name = "Postfix+checks"

    def master_services(self) -> list[str]:
        if self.milters is None:
            return super().master_services()
        return [f"{self.address}:{self.port} inet n - n - 1 postscreen",
                f"smtpd pass - - n - {self.max_smtpd} smtpd",
                "dnsblog unix - - n - 0 dnsblog", "tlsproxy unix - - n - 0 tlsproxy"]

    def mta_cpu(self) -> tuple[float, float]:
        """(Postfix's processes, the milters)."""
        return self.cpu_seconds(), sum(m.cpu_seconds() for m in self.milters or ())


class MailfleetRelay(MailfleetInstance):
    """`mailfleet serve` as the incoming gateway for DOMAIN; with `checks`, DNSBL screening and sender_auth."""

    def __init__(self, workdir: Path, sink: Sink, dns_port: int, checks: bool, src: Path,
                 smtp_workers: str | None) -> None:
        config: dict[str, Any] = {
            "roles": ["incoming_gateway"],
            "incoming_gateway": {"domains": {DOMAIN: {"destinations": [f"{sink.address}:{sink.port}"]}}},
            "dns": {"nameservers": [DNS_ADDR], "port": dns_port, "timeout": "3s"},
        }
        if checks:
            config["screening"] = {"dnsbl": {"sites": [{"zone": zone, "weight": 1} for zone in ZONES],
                                             "threshold": 1}}
            config["sender_auth"] = {"enabled": True, "authserv_id": MF_AUTHSERV}
        super().__init__(workdir, [], sink, max_sessions=1000, src=src, smtp_workers=smtp_workers,
                         roles_config=config)
        if checks:
            self.name = "Mailfleet+checks"

    def mta_cpu(self) -> tuple[float, float]:
        return self.cpu_seconds(), 0.0


Relay = PostfixRelay | MailfleetRelay


# ---------------------------------------------------------------------------------------------- messages


class Signer:
    """DKIM signatures of SIGNER (dkimpy; the key made by Debian's opendkim-genkey, its record for the zone)."""

    def __init__(self, workdir: Path) -> None:
        subprocess.run(["opendkim-genkey", "-b", "2048", "-d", SIGNER, "-s", SELECTOR, "-D", str(workdir)],
                       check=True, timeout=60)
        self.key = (workdir / f"{SELECTOR}.private").read_bytes()
        self.record = (workdir / f"{SELECTOR}.txt").read_text()  # zone syntax: bench._domainkey IN TXT ( ... )

    def sign(self, message: bytes) -> bytes:
        signature = dkim.sign(message, SELECTOR.encode(), SIGNER.encode(), self.key,
                              include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return signature + message


def make_message(i: int, sender: str = SENDER, subject: str = "Newsletter") -> bytes:
    rnd = random.Random(f"auth-{i}")
    return (f"From: News <{sender}>\r\nTo: <{RCPT}>\r\nSubject: {subject} {i}\r\nDate: {formatdate()}\r\n"
            f"Message-ID: <{i}.{rnd.getrandbits(64):x}@{SIGNER}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{office_text(rnd, SIZE_KB * 1024 - 400)}").encode()


# ---------------------------------------------------------------------------------------------- the checks


def verify_checks(relay: Relay, sink: Sink, signer: Signer, dump: Path, timeout: float) -> str:
    """Prove that `relay` runs the checks before its 250: a client listed in both zones refused, a message failing
    DMARC (From: SIGNER, unsigned, MAIL FROM a domain without SPF) refused, a signed one passed with dkim=pass and
    dmarc=pass. Returns the Authentication-Results it arrived with; raises BenchError naming what is missing."""

    def one(message: bytes, source: str, sender: str = SENDER) -> Sent:
        return run_client(relay.address, relay.port, [message], 1, timeout, rcpt=RCPT, sender=sender, helo=HELO,
                          sources=[source])[0]

    listed = one(signer.sign(make_message(0)), LISTED)
    if listed.accepted or not re.match(r"(\w+: )?5\d\d ", listed.reply):  # refused at the banner or a command
        raise BenchError(f"{relay.name} does not screen: a client listed in {', '.join(ZONES)} got "
                         f"{listed.reply!r}")
    forged = one(make_message(0, subject="Forged"), SOURCES[0], sender="bounce@other.example")
    if not forged.reply.startswith("5"):
        raise BenchError(f"{relay.name} does not apply DMARC: an unsigned From: {SIGNER} from a sender without "
                         f"SPF got {forged.reply!r}")
    before = set(dump.iterdir())
    good = one(signer.sign(make_message(0, subject="Signed")), SOURCES[1])
    if not good.accepted:
        raise BenchError(f"{relay.name}: a signed message from a clean client got {good.reply!r}")
    wait_until(lambda: set(dump.iterdir()) - before, timeout, f"{relay.name}'s signed message at the sink")
    raw = (set(dump.iterdir()) - before).pop().read_bytes()
    head = raw.split(b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n")[0].decode(errors="replace")
    unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ").replace("\n\t", " ").replace("\n ", " ")
    results = [h for h in unfolded.splitlines() if h.lower().startswith("authentication-results:")]
    text = " ".join(results).lower()
    if "dkim=pass" not in text or "dmarc=pass" not in text:
        raise BenchError(f"{relay.name}: the signed message arrived without dkim=pass and dmarc=pass: {results}")
    return "; ".join(" ".join(h.split())[:140] for h in results)


# ---------------------------------------------------------------------------------------------- the runs


@dataclass
class Result:
    server: str
    sessions: int
    messages: int
    total_s: float = 0.0  # from the first connection until the sink has counted every message
    latencies: list[float] = field(default_factory=list)  # final dot -> 250, seconds
    mta_cpu: float = 0.0  # the MTA's own processes (Mailfleet's; Postfix's master and its children)
    milter_cpu: float = 0.0  # Postfix+checks only: OpenDKIM and OpenDMARC
    dns_cpu: float = 0.0  # BIND and rbldnsd, asked by whoever is measured
    errors: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.total_s if self.total_s and not self.errors else 0.0

    def per_msg(self, seconds: float) -> float:
        return seconds * 1000 / self.messages

    @property
    def cpu_ms(self) -> float:
        """Everything the server needed per message: its processes, its milters and the DNS it asked."""
        return self.per_msg(self.mta_cpu + self.milter_cpu + self.dns_cpu)

    def percentile(self, p: float) -> float:
        return runs.nearest_rank(self.latencies, p)


def measure(relay: Relay, sink: Sink, dns_cpu: Callable[[], float], sessions: int, messages: list[bytes],
            timeout: float) -> Result:
    result = Result(relay.name, sessions, len(messages))
    wait_until(relay.queue_empty, timeout, f"{relay.name}'s queue to drain before {sessions} sessions")
    sink.ensure_running()
    arrived_before = sink.count
    cpu = (relay.mta_cpu(), dns_cpu())
    start = time.monotonic()
    try:
        sent = run_client(relay.address, relay.port, messages, sessions, timeout, rcpt=RCPT, sender=SENDER,
                          helo=HELO, sources=SOURCES)
        refused = [s.reply for s in sent if not s.accepted]
        if refused:
            result.errors = f"{len(refused)} not accepted, e.g. {refused[0]!r}"
        else:
            wait_until(lambda: sink.count - arrived_before >= len(messages), timeout,
                       f"{relay.name}: all messages at the sink ({sink.count - arrived_before}/{len(messages)})",
                       0.02)
        result.total_s = time.monotonic() - start
        result.latencies = [s.latency for s in sent if s.accepted]
    except BenchError as exc:
        result.errors = str(exc)
    (mta, milters), dns_after = relay.mta_cpu(), dns_cpu()
    result.mta_cpu, result.milter_cpu, result.dns_cpu = mta - cpu[0][0], milters - cpu[0][1], dns_after - cpu[1]
    return result


# ---------------------------------------------------------------------------------------------- report


ORDER = ("Postfix", "Postfix+checks", "Mailfleet", "Mailfleet+checks")


def print_table(results: list[Result]) -> None:
    keyed = runs.best_of(results, lambda r: (r.server, r.sessions))
    header = (f"{'server':<17} {'sessions':>8} {'msg/s':>8} {'p50 ms':>7} {'p99 ms':>7}   "
              f"{'CPU ms/msg: MTA':>15} {'milters':>8} {'DNS':>6} {'all':>6}")
    print(header)
    print("-" * len(header))
    for sessions in sorted({r.sessions for r in results}):
        for server in ORDER:
            r = keyed.get((server, sessions))
            if r is None:
                continue
            rate = "FAILED" if r.errors else f"{r.rate:,.1f}"
            print(f"{server:<17} {sessions:>8} {rate:>8} {r.percentile(50):>7,.0f} {r.percentile(99):>7,.0f}   "
                  f"{r.per_msg(r.mta_cpu):>15.2f} {r.per_msg(r.milter_cpu):>8.2f} {r.per_msg(r.dns_cpu):>6.2f} "
                  f"{r.cpu_ms:>6.2f}")
        pf, mf = keyed.get(("Postfix+checks", sessions)), keyed.get(("Mailfleet+checks", sessions))
        if pf and mf and pf.rate and mf.rate:
            print(f"{'':<17} {sessions:>8} with the checks, Mailfleet / Postfix: {mf.rate / pf.rate:.2f}x msg/s, "
                  f"{mf.cpu_ms / pf.cpu_ms:.2f}x CPU per message")
    print("(best of the repeats; every measurement, msg/s:)")
    every: dict[tuple[str, int], list[str]] = {}
    for r in results:
        every.setdefault((r.server, r.sessions), []).append("FAILED" if r.errors else f"{r.rate:,.1f}")
    for (server, sessions), rates in sorted(every.items()):
        print(f"  {server:<17} {sessions:>2} sessions: {', '.join(rates)}")
    for r in results:
        if r.errors:
            print(f"  ! {r.server} {r.sessions} sessions: {r.errors}")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_common_options(p, messages=1000, timeout=300)
    p.add_argument("--checks", choices=["both", "on", "off"], default="both",
                   help="measure each MTA with the checks, without, or both (default)")
    return p.parse_args(argv)


def _dns_free() -> str | None:
    """Why the bench's DNS address cannot be had, or None."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((DNS_ADDR, 53))
            except OSError as exc:
                return f"{DNS_ADDR} port 53 is taken ({exc})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    me = "bench/auth_throughput.py"
    tools = ("postfix", "postconf", "smtp-sink", "rbldnsd", "/usr/sbin/named", "/usr/sbin/opendkim",
             "/usr/sbin/opendmarc", "opendkim-genkey", "unshare", "nsenter")
    refused = runs.preflight(me, "Postfix's master must start as root; the DNS listens on port 53", tools,
                        "postfix rbldnsd bind9 opendkim opendkim-tools opendmarc util-linux")
    if refused is not None:
        return refused
    taken = _dns_free()
    if taken:
        print(f"{me}: {taken}", file=sys.stderr)
        return 2
    session_counts = [int(s) for s in args.sessions.split(",") if s]
    raise_nofile(20000)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))  # unwinds, so the finally stops everything

    tmp = Path(tempfile.mkdtemp(prefix="mailfleet-auth-bench-"))
    os.chmod(tmp, 0o755)
    spread = spread_subdirectories(tmp)
    dns_dir = server_dir(tmp, "dns")
    rbl = Rbldnsd(dns_dir)
    sink = Sink(ADDR)
    dump = tmp / "sink-dump"
    dump.mkdir()
    shutil.chown(dump, "nobody")
    namespace = ResolvNamespace(dns_dir)
    relays: list[Relay] = []
    results: list[Result] = []
    started: list[Any] = []
    try:
        print(f"bench: {os.cpu_count()} CPUs (load average now {os.getloadavg()[0]:.1f}), {args.messages} signed "
              f"{SIZE_KB} KB messages per measurement from {len(SOURCES)} client addresses, best of {args.repeat}; "
              f"work dir {tmp}", flush=True)
        print(f"bench: {spread}", flush=True)
        signer = Signer(dns_dir)
        rbl.setup()
        rbl.start()
        started.append(rbl)
        named = start_named(dns_dir / "named", {SIGNER: signer_zone(signer.record), "other.example": "",
                                                "37.0.127.in-addr.arpa": reverse_zone()},
                            address=DNS_ADDR, port=53, forwards={zone: (ADDR, rbl.port) for zone in ZONES})
        started.append(named)
        dns_procs = (named.process.pid, rbl.proc.pid if rbl.proc else 0)

        def dns_cpu() -> float:
            return sum(proc_cpu_seconds(p) for p in dns_procs)

        sink.start(dump)
        started.append(sink)
        variants = {"both": (False, True), "on": (True,), "off": (False,)}[args.checks]
        if args.only != "postfix":
            for checks in variants:
                relays.append(MailfleetRelay(server_dir(tmp, "mailfleet"), sink, named.port, checks,
                                             args.mailfleet_src.resolve(), args.smtp_workers))
        if args.only != "mailfleet":
            namespace.start()
            started.append(namespace)
            milters = (OpenDKIM(server_dir(tmp, "opendkim")), OpenDMARC(server_dir(tmp, "opendmarc")))
            for milter in milters:
                milter.prefix = namespace.prefix
                milter.setup()
                milter.start()
                started.append(milter)
            if False in variants:
                relays.append(PostfixRelay(server_dir(tmp, "postfix"), sink, 200, None, namespace))
            if True in variants:
                relays.append(PostfixRelay(server_dir(tmp, "postfix-checks"), sink, 200, milters, namespace))
        for relay in relays:
            print(f"bench: {relay.name}: {filesystem_note(relay.workdir)}", flush=True)
            relay.setup()
            relay.start()
            started.append(relay)
        for relay in relays:
            if relay.name.endswith("+checks"):
                print(f"bench: {relay.name} checks (listed client and DMARC failure refused, signed mail passed): "
                      f"{verify_checks(relay, sink, signer, dump, args.timeout)}", flush=True)
        sink.stop()
        sink.start()  # measurements without writing each message to a file
        print(f"bench: signing {args.messages} messages", flush=True)
        batch = [signer.sign(make_message(i)) for i in range(1, args.messages + 1)]
        for sessions in session_counts:
            for _, relay in runs.in_turns(relays, args.repeat):
                r = measure(relay, sink, dns_cpu, sessions, batch, args.timeout)
                results.append(r)
                runs.progress(f"{relay.name:<17} {sessions:>2} sessions", r, f"{r.per_msg(r.mta_cpu):.2f} MTA + "
                         f"{r.per_msg(r.milter_cpu):.2f} milters + {r.per_msg(r.dns_cpu):.2f} DNS")
    except BenchError as exc:
        return runs.failed(exc)
    finally:
        runs.stop_all(started, tmp, args.keep)
    return runs.conclude(results, print_table)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
