#!/usr/bin/env python3
"""DKIM signing at relay speed: Mailfleet (outgoing_gateway, dkim on) against Postfix with the two OpenDKIM milters
(signing mode), on the same keys, relaying the same load to the same sink, in one run.

Both sign every message twice for sender.example: rsa-sha256 with a 2048-bit key and ed25519-sha256 (RFC 8463),
relaxed/relaxed. Mailfleet reads the keys from its dkim.keys_dir (the layout of appliance/signing/keys.py,
written by tests/signing/keys_on_disk.py); OpenDKIM gets the same PEM files through a KeyTable and a
SigningTable; OpenDKIM 2.11 signs with one SignatureAlgorithm per instance, so Postfix runs two milters, one a key
(OpenDKIMSigner says why). Before measuring, one message of each
is written by the sink and verified (dkimpy, keys served by a BIND on 127.0.0.1 port 53): the bench names the
signatures that are missing or do not verify. Run as root (Postfix's master must start as root; `make
bench-dkim` stops the system Postfix first):

    .venv/bin/python bench/dkim_throughput.py                    # or: make bench-dkim
    .venv/bin/python bench/dkim_throughput.py --messages 300 --sessions 10 --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import dkim
import dns.exception
import dns.resolver
import runs
from auth_throughput import (
    DNS_ADDR,
    HELO,
    RCPT,
    SENDER,
    SIGNER,
    SOURCES,
    Milter,
    ResolvNamespace,
    Result,
    _dns_free,
    make_message,
    measure,
)
from daemons import ADDR
from smtp_load import run_client
from smtp_throughput import (
    BenchError,
    MailfleetInstance,
    PostfixInstance,
    Sink,
    filesystem_note,
    proc_cpu_seconds,
    raise_nofile,
    server_dir,
    spread_subdirectories,
    wait_until,
)

from smtp_throughput import REPO  # isort: skip

sys.path.insert(0, str(REPO / "tests"))
from peers.named import start_named  # noqa: E402 - tests/ is on the path only from here
from signing.keys_on_disk import TestKey, write_keys  # noqa: E402

ORDER = ("Postfix+OpenDKIM", "Mailfleet+DKIM")
SELECTORS = {"rsa2026": "rsa-sha256", "ed2026": "ed25519-sha256"}


class OpenDKIMSigner(Milter):
    """Debian's opendkim signing (Mode s) mail from 127.0.0.0/8 for SIGNER with one key. OpenDKIM 2.11 signs
    with the one SignatureAlgorithm of its config (an ed25519 key in a rsa-sha256 instance fails with
    "EVP_PKEY_get1_RSA() failed"), so Postfix gets two of these milters: rsa-sha256, then ed25519-sha256."""

    name = "opendkim"

    def __init__(self, workdir: Path, keys_dir: Path, key: TestKey) -> None:
        super().__init__(workdir)
        self.keys_dir = keys_dir
        self.key = key

    def setup(self) -> None:
        self.own_dir()
        key = self.key
        pem = self.workdir / f"{key.selector}.pem"
        shutil.copyfile(self.keys_dir / SIGNER / f"{key.selector}.pem", pem)
        shutil.chown(pem, "opendkim")
        os.chmod(pem, 0o600)
        (self.workdir / "KeyTable").write_text(f"{key.selector}._domainkey.{SIGNER} {SIGNER}:{key.selector}:{pem}\n")
        (self.workdir / "SigningTable").write_text(f"*@{SIGNER} {key.selector}._domainkey.{SIGNER}\n")
        conf = {"Mode": "s", "Socket": f"local:{self.socket_path}", "UMask": "000",
                "KeyTable": f"file:{self.workdir / 'KeyTable'}",
                "SigningTable": f"refile:{self.workdir / 'SigningTable'}", "SignatureAlgorithm": key.algorithm,
                "Canonicalization": "relaxed/relaxed", "InternalHosts": "127.0.0.0/8",
                # The bench's work dir is under /tmp (world-writable): OpenDKIM's safe-key check refuses any key
                # below it; these are throw-away keys of the bench.
                "RequireSafeKeys": "no",
                "PidFile": str(self.workdir / "opendkim.pid"), "UserID": "opendkim", "Background": "no",
                "Syslog": "no"}
        (self.workdir / "opendkim.conf").write_text("".join(f"{k} {v}\n" for k, v in conf.items()))

    def command(self) -> list[str]:
        return ["/usr/sbin/opendkim", "-f", "-x", str(self.workdir / "opendkim.conf")]


class PostfixSigner(PostfixInstance):
    """The private Postfix relaying to the sink, OpenDKIM as its milter before the 250."""

    def __init__(self, workdir: Path, sink: Sink, milters: list[OpenDKIMSigner], namespace: ResolvNamespace) -> None:
        main_cf = {"relay_domains": RCPT.split("@")[1], "mynetworks": "127.0.0.0/8",
                   "smtpd_milters": ", ".join(f"unix:{m.socket_path}" for m in milters), "non_smtpd_milters": "",
                   "milter_protocol": "6", "milter_default_action": "tempfail"}
        super().__init__(workdir, [], sink, 200, main_cf=main_cf)
        self.milters = milters
        self.prefix = namespace.prefix
        self.name = "Postfix+OpenDKIM"

    def mta_cpu(self) -> tuple[float, float]:
        return self.cpu_seconds(), sum(m.cpu_seconds() for m in self.milters)


class MailfleetSigner(MailfleetInstance):
    """`mailfleet serve` as the outgoing gateway, relaying 127.0.0.0/8 to the sink, signing with dkim on."""

    def __init__(self, workdir: Path, sink: Sink, keys_dir: Path, src: Path, smtp_workers: str | None) -> None:
        config: dict[str, Any] = {
            "roles": ["outgoing_gateway"],
            "outgoing_gateway": {"relay_networks": ["127.0.0.0/8"]},
            "delivery": {"smarthost": f"{sink.address}:{sink.port}"},
            "dns": {"nameservers": [DNS_ADDR], "port": 53, "timeout": "3s"},
            "dkim": {"enabled": True, "keys_dir": str(keys_dir)},
        }
        super().__init__(workdir, [], sink, max_sessions=1000, src=src, smtp_workers=smtp_workers,
                         roles_config=config)
        self.name = "Mailfleet+DKIM"

    def mta_cpu(self) -> tuple[float, float]:
        return self.cpu_seconds(), 0.0


def _dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_ADDR]
    try:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
    except dns.exception.DNSException:
        return None
    return b"".join(b"".join(r.strings) for r in answer)


def verify_signed(relay: Any, dump: Path, timeout: float) -> str:
    """One message through ``relay``, written by the sink: which signatures it carries and that each verifies."""
    before = set(dump.iterdir())
    sent = run_client(relay.address, relay.port, [make_message(0, subject="Signed")], 1, timeout, rcpt=RCPT,
                      sender=SENDER, helo=HELO, sources=[SOURCES[0]])[0]
    if not sent.accepted:
        raise BenchError(f"{relay.name}: the test message got {sent.reply!r}")
    wait_until(lambda: set(dump.iterdir()) - before, timeout, f"{relay.name}'s message at the sink")
    raw = (set(dump.iterdir()) - before).pop().read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    count = raw.split(b"\r\n\r\n")[0].count(b"DKIM-Signature:")
    found = []
    for index in range(count):
        d = dkim.DKIM(raw)
        ok = d.verify(index, dnsfunc=_dnsfunc)
        algorithm = d.signature_fields.get(b"a", b"?").decode()
        found.append(f"{algorithm} {'verifies' if ok else 'FAILS'}")
        if not ok:
            raise BenchError(f"{relay.name}: its {algorithm} signature does not verify")
    if {f.split()[0] for f in found} != set(SELECTORS.values()):
        note = f"{relay.name} signed with {', '.join(found) or 'nothing'}, not both rsa-sha256 and ed25519-sha256"
        if "Postfix" not in relay.name:
            raise BenchError(note)
        return note
    return ", ".join(found)


def print_table(results: list[Result]) -> None:
    keyed = runs.best_of(results, lambda r: (r.server, r.sessions))
    header = (f"{'server':<17} {'sessions':>8} {'msg/s':>8} {'p50 ms':>7} {'p99 ms':>7}   "
              f"{'CPU ms/msg: MTA':>15} {'milter':>7} {'all':>6}")
    print(header)
    print("-" * len(header))
    for sessions in sorted({r.sessions for r in results}):
        for server in ORDER:
            r = keyed.get((server, sessions))
            if r is None:
                continue
            rate = "FAILED" if r.errors else f"{r.rate:,.1f}"
            print(f"{server:<17} {sessions:>8} {rate:>8} {r.percentile(50):>7,.0f} {r.percentile(99):>7,.0f}   "
                  f"{r.per_msg(r.mta_cpu):>15.2f} {r.per_msg(r.milter_cpu):>7.2f} "
                  f"{r.per_msg(r.mta_cpu + r.milter_cpu):>6.2f}")
        pf, mf = keyed.get((ORDER[0], sessions)), keyed.get((ORDER[1], sessions))
        if pf and mf and pf.rate and mf.rate:
            print(f"{'':<17} {sessions:>8} Mailfleet / Postfix+OpenDKIM: {mf.rate / pf.rate:.2f}x msg/s "
                  f"(target 1.5x), {(mf.mta_cpu / mf.messages) / ((pf.mta_cpu + pf.milter_cpu) / pf.messages):.2f}x "
                  "CPU per message")
    print("(best of the repeats; every measurement, msg/s:)")
    every: dict[tuple[str, int], list[str]] = {}
    for r in results:
        every.setdefault((r.server, r.sessions), []).append("FAILED" if r.errors else f"{r.rate:,.1f}")
    for (server, sessions), rates in sorted(every.items()):
        print(f"  {server:<17} {sessions:>2} sessions: {', '.join(rates)}")
    for r in results:
        if r.errors:
            print(f"  ! {r.server} {r.sessions} sessions: {r.errors}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_common_options(p, messages=1000, timeout=300)
    args = p.parse_args(argv)
    me = "bench/dkim_throughput.py"
    tools = ("postfix", "postconf", "smtp-sink", "/usr/sbin/named", "/usr/sbin/opendkim", "unshare", "nsenter")
    refused = runs.preflight(me, "Postfix's master must start as root; the DNS listens on port 53", tools,
                             "postfix bind9 opendkim util-linux")
    if refused is not None:
        return refused
    taken = _dns_free()
    if taken:
        print(f"{me}: {taken}", file=sys.stderr)
        return 2
    session_counts = [int(s) for s in args.sessions.split(",") if s]
    raise_nofile(20000)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))

    tmp = Path(tempfile.mkdtemp(prefix="mailfleet-dkim-bench-"))
    os.chmod(tmp, 0o755)
    spread = spread_subdirectories(tmp)
    dns_dir = server_dir(tmp, "dns")
    sink = Sink(ADDR)
    dump = tmp / "sink-dump"
    dump.mkdir()
    shutil.chown(dump, "nobody")
    namespace = ResolvNamespace(dns_dir)
    relays: list[Any] = []
    results: list[Result] = []
    started: list[Any] = []
    try:
        print(f"bench: {os.cpu_count()} CPUs (load average now {os.getloadavg()[0]:.1f}), {args.messages} "
              f"messages per measurement, each signed rsa-sha256 (2048) + ed25519-sha256, best of {args.repeat}; "
              f"work dir {tmp}", flush=True)
        print(f"bench: {spread}", flush=True)
        keys_dir = tmp / "dkim"
        keys = write_keys(keys_dir, SIGNER, SELECTORS)
        records = "".join(k.record + "\n" for k in keys)
        named = start_named(dns_dir / "named", {SIGNER: records}, address=DNS_ADDR, port=53)
        started.append(named)
        sink.start(dump)
        started.append(sink)
        if args.only != "postfix":
            relays.append(MailfleetSigner(server_dir(tmp, "mailfleet"), sink, keys_dir,
                                          args.mailfleet_src.resolve(), args.smtp_workers))
        if args.only != "mailfleet":
            namespace.start()
            started.append(namespace)
            milters = [OpenDKIMSigner(server_dir(tmp, f"opendkim-{k.selector}"), keys_dir, k) for k in keys]
            for milter in milters:
                milter.prefix = namespace.prefix
                milter.setup()
                milter.start()
                started.append(milter)
            relays.append(PostfixSigner(server_dir(tmp, "postfix"), sink, milters, namespace))
        for relay in relays:
            print(f"bench: {relay.name}: {filesystem_note(relay.workdir)}", flush=True)
            relay.setup()
            relay.start()
            started.append(relay)
        for relay in relays:
            print(f"bench: {relay.name} at the sink: {verify_signed(relay, dump, args.timeout)}", flush=True)
        sink.stop()
        sink.start()  # measurements without writing each message to a file
        batch = [make_message(i) for i in range(1, args.messages + 1)]
        dns_pid = named.process.pid
        for sessions in session_counts:
            for _, relay in runs.in_turns(relays, args.repeat):
                r = measure(relay, sink, lambda: proc_cpu_seconds(dns_pid), sessions, batch, args.timeout)
                results.append(r)
                runs.progress(f"{relay.name:<17} {sessions:>2} sessions", r,
                              f"{r.per_msg(r.mta_cpu):.2f} MTA + {r.per_msg(r.milter_cpu):.2f} milter")
    except BenchError as exc:
        return runs.failed(exc)
    finally:
        runs.stop_all(started, tmp, args.keep)
    return runs.conclude(results, print_table)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
