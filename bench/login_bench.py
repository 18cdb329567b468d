"""IMAP LOGIN benchmark: Mailfleet's login cache off and on, beside Dovecot 2.3 with auth_cache off and on.

    .venv/bin/python bench/login_bench.py [--clients 10] [--rounds 10]        (root: Dovecot drops privileges)

Each client is a thread with its own source address (127.0.51.100 and up, so that no per-address limit of
either server is what is measured) that connects, sends LOGIN (timed, to its tagged reply), LOGOUT, and
again, ``--rounds`` times; one login per client beforehand is not counted (both caches start warm). Every
client logs in as a user of its own, whose password hash is argon2id at Mailfleet's default cost (argon2-cffi:
m=64 MiB, t=3, p=4) for both servers when Dovecot's libsodium verifies it, else each server gets its own
default (Dovecot's ``doveadm pw -s ARGON2ID``: m=64 MiB, t=3, p=1), as the output says.

Mailfleet runs as ``mailfleet serve`` (the real service: ban accounting, directory, argon2 pool of
``auth.password_workers``); Dovecot as tests/imap/dovecot_peer.py runs it, with a passwd-file passdb of the
same hashes and ``auth_cache_size`` 0 or 10M. Printed per server and cache: logins/s, p50 and p99 per LOGIN.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import argon2
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from imap import dovecot_peer  # noqa: E402
from peers.mailfleet import RunningMailfleet  # noqa: E402
from peers.named import free_port  # noqa: E402
from runs import nearest_rank  # noqa: E402

SERVER = "127.0.51.1"
PASSWORD = "login bench password"
PASSDB = "args = scheme=PLAIN username_format=%u {base}/passwd"


@dataclass
class Run:
    server: str
    cache: str
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


class IMAPFrom(imaplib.IMAP4):
    """imaplib from a given source address (imaplib has no option for it)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=120)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


def login_once(host: str, port: int, source: str, user: str) -> float:
    client = IMAPFrom(host, port, source)
    try:
        started = time.perf_counter()
        client.login(user, PASSWORD)
        took = time.perf_counter() - started
    except BaseException:
        client.shutdown()
        raise
    client.logout()  # closes the connection
    return took


def drive(run: Run, host: str, port: int, users: list[str], rounds: int) -> Run:
    """The clients at once, each ``rounds`` timed logins after one untimed."""
    sources = [f"127.0.51.{100 + i}" for i in range(len(users))]
    for source, user in zip(sources, users, strict=True):
        login_once(host, port, source, user)
    start = threading.Barrier(len(users) + 1)
    lock = threading.Lock()

    def client(source: str, user: str) -> None:
        start.wait(60)
        for _ in range(rounds):
            try:
                took = login_once(host, port, source, user)
            except (OSError, imaplib.IMAP4.error) as exc:
                with lock:
                    run.errors.append(f"{user}: {exc}")
                continue
            with lock:
                run.latencies.append(took)

    threads = [threading.Thread(target=client, args=pair) for pair in zip(sources, users, strict=True)]
    for thread in threads:
        thread.start()
    start.wait(60)
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    run.wall = time.perf_counter() - began
    return run


def mailfleet_run(base: Path, hashes: dict[str, str], cached: bool, rounds: int) -> Run:
    workdir = base / f"mailfleet-{'on' if cached else 'off'}"
    workdir.mkdir()
    port = free_port([SERVER])
    config = {
        "hostname": "bench.example.org", "data_dir": str(workdir / "data"), "roles": ["primary"],
        "listen": {"imap": [f"{SERVER}:{port}"]}, "tls": {"plaintext_auth_on_loopback": True},
        "primary": {"domains": ["example.org"],
                    "users": [{"address": u, "password_hash": h} for u, h in hashes.items()]},
        "auth": {"login_cache": {"enabled": cached}},
    }

    path = workdir / "mailfleet.yml"
    path.write_text(yaml.safe_dump(config))
    server = RunningMailfleet(path, config, workdir / "server.log", ports={"imap": port}, address=SERVER)
    server.start(timeout=60)
    try:
        return drive(Run("Mailfleet", "login cache " + ("on" if cached else "off")), SERVER, port,
                     list(hashes), rounds)
    finally:
        server.stop()


def dovecot_run(base: Path, hashes: dict[str, str], cached: bool, rounds: int) -> Run:
    """Dovecot with a passwd-file of the given argon2id hashes (dovecot_peer's config, passdb and cache lines
    changed here, not there)."""
    home = base / f"dovecot-{'on' if cached else 'off'}"
    home.mkdir()
    os.chmod(home, 0o755)
    original = dovecot_peer.CONFIG
    cache = "auth_cache_size = 10M\nauth_cache_ttl = 300 s\n" if cached else "auth_cache_size = 0\n"
    dovecot_peer.CONFIG = cache + original.replace(PASSDB, "args = username_format=%u {base}/passwd-argon2")
    (home / "passwd-argon2").write_text("".join(f"{u}:{{ARGON2ID}}{h}\n" for u, h in hashes.items()))
    try:
        dovecot = dovecot_peer.start_dovecot(home, home / "mail", {})
    finally:
        dovecot_peer.CONFIG = original
    try:
        return drive(Run("Dovecot 2.3", "auth_cache " + ("on" if cached else "off")), "127.0.0.1", dovecot.port,
                     list(hashes), rounds)
    finally:
        dovecot.stop()


def dovecot_verifies(hashed: str) -> bool:
    done = subprocess.run(["doveadm", "pw", "-t", "{ARGON2ID}" + hashed, "-p", PASSWORD], capture_output=True)
    return done.returncode == 0


def dovecot_hash() -> str:
    done = subprocess.run(["doveadm", "pw", "-s", "ARGON2ID", "-p", PASSWORD], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip().removeprefix("{ARGON2ID}")


def print_table(runs: list[Run], clients: int, rounds: int) -> None:
    print(f"\n{clients} concurrent IMAP clients x {rounds} LOGINs each, argon2id, loopback, "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'server':<12} {'cache':<18} {'logins/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for run in runs:
        print(f"{run.server:<12} {run.cache:<18} {run.rate:>9.1f} {nearest_rank(run.latencies, 50):>9.1f} "
              f"{nearest_rank(run.latencies, 99):>9.1f} {len(run.errors):>7}")
    for run in runs:
        for error in run.errors[:3]:
            print(f"  {run.server}, {run.cache}: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10, help="timed logins per client and case")
    parser.add_argument("--no-dovecot", action="store_true", help="Mailfleet only")
    args = parser.parse_args()
    if not args.no_dovecot and (os.geteuid() != 0 or shutil.which("doveadm") is None):
        print("login_bench: Dovecot needs root and dovecot-imapd (apt-get install dovecot-imapd); "
              "or run with --no-dovecot", file=sys.stderr)
        return 2
    users = [f"user{i}@example.org" for i in range(args.clients)]
    hasher = argon2.PasswordHasher()  # Mailfleet's default cost
    ours = {user: hasher.hash(PASSWORD) for user in users}
    theirs = ours
    if not args.no_dovecot and not dovecot_verifies(next(iter(ours.values()))):
        print("note: Dovecot's libsodium does not verify argon2-cffi's p=4 hash; Dovecot gets its own default "
              "argon2id (doveadm pw -s ARGON2ID)")
        theirs = {user: dovecot_hash() for user in users}
    base = Path(tempfile.mkdtemp(prefix="mailfleet-login-bench-"))
    os.chmod(base, 0o755)
    runs: list[Run] = []
    try:
        for cached in (False, True):
            runs.append(mailfleet_run(base, ours, cached, args.rounds))
        if not args.no_dovecot:
            for cached in (False, True):
                runs.append(dovecot_run(base, theirs, cached, args.rounds))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_table(runs, args.clients, args.rounds)
    return 1 if any(run.errors for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
