"""Web console and API latency with 10 000 users and 10 000 queued messages.

    .venv/bin/python bench/web_bench.py [--users 10000] [--queued 10000] [--clients 10] [--requests 300]

One `mailfleet serve` (primary, HTTPS on listen.web) whose directory holds ``--users`` users (one shared argon2
hash written straight into directory.sqlite: hashing 10 000 passwords would only time argon2) and whose spool
holds ``--queued`` deferred messages (each with a recorded failed attempt and its next attempt an hour away,
so the runner only holds them). ``--clients`` threads, each with its own HTTPS keep-alive connection, request
each case ``--requests`` times in all; printed per case: requests/s, p50, p95, p99, and whether p95 is under the
target (100 ms). The reference in the same run is what an administrator has without the console: the CLI
(`mailfleet user list`, `mailfleet queue list --json`) on the same data, timed per call.
"""

from __future__ import annotations

import argparse
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from peers.mailfleet import MAILFLEET, RunningMailfleet  # noqa: E402
from peers.named import free_port  # noqa: E402
from peers.tls import self_signed_cert  # noqa: E402

from appliance.message.model import QueuedMessage, Recipient, new_queue_id  # noqa: E402
from appliance.queue.spool import Spool  # noqa: E402

TARGET_P95 = 0.100
ADMIN, PASSWORD = "admin@example.org", "benchmark admin password"


def populate(data_dir: Path, users: int, queued: int) -> str:
    """The users straight into the directory, the deferred messages into the spool; returns one queue ID."""
    import argon2

    data_dir.mkdir(parents=True, exist_ok=True)
    from appliance.auth.directory import Directory

    directory = Directory(data_dir / "directory.sqlite", config_domains=["example.org"])
    directory.add_user(ADMIN, PASSWORD)
    directory.set_admin(ADMIN, True)
    directory.close()
    shared = argon2.PasswordHasher().hash("not used by the benchmark")
    with sqlite3.connect(data_dir / "directory.sqlite") as db:
        db.executemany("INSERT INTO users (address, password_hash, quota) VALUES (?, ?, ?)",
                       ((f"user{i:05d}@example.org", shared, 1 << 30) for i in range(users)))
    spool = Spool(data_dir / "spool")
    body = (b"From: sender@example.net\r\nTo: someone@remote.example\r\nSubject: queued for the benchmark\r\n"
            b"Message-ID: <bench@example.net>\r\n\r\n" + b"x" * 2000 + b"\r\n")
    later, one = time.time() + 3600, ""
    for i in range(queued):
        rcpt = Recipient(address=f"rcpt{i}@remote.example", original=f"rcpt{i}@remote.example", attempts=1,
                         next_attempt=later, last_code=451, last_text="4.4.1 connection refused (benchmark)")
        message = QueuedMessage(queue_id=new_queue_id(), mail_from="sender@example.net", arrival=time.time() - i,
                                recipients=[rcpt], client="192.0.2.1", size=len(body))
        spool.write(message, body)
        spool.record(message, [rcpt])
        one = one or message.queue_id
    spool.close()
    return one


def login(client: httpx.Client) -> None:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, "no CSRF token on /login"
    answer = client.post("/login", data={"csrf": csrf.group(1), "username": ADMIN, "password": PASSWORD})
    if answer.status_code != 303:
        raise RuntimeError(f"login failed: {answer.status_code} {answer.text[:200]}")


def measure(url: str, context: ssl.SSLContext, path: str, auth: dict[str, str] | None, clients: int,
            requests: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    per_client = max(1, requests // clients)

    def run() -> None:
        with httpx.Client(base_url=url, verify=context, timeout=30, headers=auth or {}) as client:
            if auth is None:
                login(client)
            client.get(path)  # warm: the connection and the TLS session
            mine = []
            for _ in range(per_client):
                start = time.perf_counter()
                answer = client.get(path)
                mine.append(time.perf_counter() - start)
                if answer.status_code != 200:
                    errors.append(f"{path}: {answer.status_code} {answer.text[:200]}")
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return time.perf_counter() - start, latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="requests per case, all clients together")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mf-web-bench-"))
    data_dir = work / "data"
    print(f"populating: {args.users} users, {args.queued} deferred messages ...", flush=True)
    one = populate(data_dir, args.users, args.queued)
    cert = self_signed_cert(work / "tls", "bench.example", ("127.0.0.1",))
    smtp, web, closed = free_port(["127.0.0.1"]), free_port(["127.0.0.1"]), free_port(["127.0.0.1"])
    config = {"hostname": "bench.example", "roles": ["primary"], "data_dir": str(data_dir),
              "primary": {"domains": ["example.org"]},
              "listen": {"smtp": [f"127.0.0.1:{smtp}"], "web": [f"127.0.0.1:{web}"]},
              "tls": {"cert": str(cert.cert), "key": str(cert.key)},
              "delivery": {"smarthost": f"127.0.0.1:{closed}"}}
    path = work / "mailfleet.yml"
    path.write_text(yaml.safe_dump(config))
    server = RunningMailfleet(path, config, work / "server.log", ports={"smtp": smtp, "web": web})
    server.config["hostname"] = "bench.example"
    try:
        server.start(timeout=120)
        token = subprocess.run([*MAILFLEET, "--config", str(path), "web", "token", "add", "bench", "--scope", "read"],
                               capture_output=True, text=True, check=True).stdout.strip()
        context = ssl.create_default_context(cafile=str(cert.cert))
        url = f"https://127.0.0.1:{web}"
        bearer = {"Authorization": f"Bearer {token}"}
        cases = [
            ("API users, first page", "/api/v1/users?limit=100", bearer),
            ("API users, last page", f"/api/v1/users?offset={max(0, args.users - 100)}&limit=100", bearer),
            ("API users, search", "/api/v1/users?q=user09&limit=100", bearer),
            ("API queue, first page", "/api/v1/queue?limit=100", bearer),
            ("API queue, last page", f"/api/v1/queue?offset={max(0, args.queued - 100)}&limit=100", bearer),
            ("API one message", f"/api/v1/queue/{one}", bearer),
            ("API node summary", "/api/v1/node", bearer),
            ("page dashboard", "/", None),
            ("page users", "/users", None),
            ("page queue", "/queue", None),
            ("metrics", "/metrics", bearer),
        ]
        print(f"{'case':<26} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  target p95 < 100 ms")
        worst, failures = 0.0, 0
        for label, target, auth in cases:
            try:
                elapsed, lat = measure(url, context, target, auth, args.clients, args.requests)
            except (RuntimeError, httpx.HTTPError) as exc:
                print(f"{label:<26} FAILED: {exc}", flush=True)
                failures += 1
                continue
            p95 = pct(lat, 95)
            worst = max(worst, p95)
            print(f"{label:<26} {len(lat) / elapsed:8.1f} {pct(lat, 50) * 1000:8.1f} {p95 * 1000:8.1f} "
                  f"{pct(lat, 99) * 1000:8.1f}  {'met' if p95 < TARGET_P95 else 'MISSED'}", flush=True)
        print("\nreference, the CLI on the same data (one call, wall time):")
        for label, cli in (("mailfleet user list", ["user", "list"]),
                           ("mailfleet queue list --json", ["queue", "list", "--json"])):
            start = time.perf_counter()
            subprocess.run([*MAILFLEET, "--config", str(path), *cli], capture_output=True, check=True)
            print(f"  {label:<30} {(time.perf_counter() - start) * 1000:8.1f} ms")
        print(f"\nworst p95: {worst * 1000:.1f} ms ({'target met' if worst < TARGET_P95 else 'target MISSED'})")
        if failures:
            print(f"{failures} case(s) failed")
        return 0 if worst < TARGET_P95 and not failures else 1
    finally:
        server.kill()
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
