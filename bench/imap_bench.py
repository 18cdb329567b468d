"""IMAP benchmark: Mailfleet vs Dovecot (Debian's dovecot-imapd) on the same 10,000-message mailbox.

    .venv/bin/python bench/imap_bench.py [--messages 10000] [--bodies 1000]

Both servers get the same messages (ours through MailStore.deliver, Dovecot's as Maildir files),
run on loopback in their own processes, and are driven by the same imaplib client. Printed per
operation: Mailfleet seconds, Dovecot seconds and the ratio (Mailfleet / Dovecot). Each operation
is measured cold (first time, indexes being built) and warm (best of 3).
"""

from __future__ import annotations

import argparse
import imaplib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from imap.dovecot_peer import free_port, start_dovecot  # noqa: E402

from appliance.store import MailStore  # noqa: E402

USER, PASSWORD = "bench@example.org", "bench password"
SERVER = """
import asyncio, ssl, sys
from pathlib import Path
from appliance.imap.server import start_imap
from appliance.store import MailStore

class Auth:
    async def authenticate(self, username, password, client_ip):
        return username.lower() if (username.lower(), password) == (sys.argv[3], sys.argv[4]) else None

async def main():
    store = MailStore(Path(sys.argv[1]))
    await start_imap([("127.0.0.1", int(sys.argv[2]))], [], store, Auth(), ssl.create_default_context(),
                     "bench.example.org", True)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def make_message(i: int, rng: random.Random) -> bytes:
    subject = " ".join(rng.choices(WORDS, k=5)) + f" #{i}"
    body_lines = [" ".join(rng.choices(WORDS, k=12)) for _ in range(rng.randint(5, 200))]
    head = (f"From: Sender {i % 97} <sender{i % 97}@example.net>\r\nTo: {USER}\r\n"
            f"Subject: {subject}\r\nDate: Mon, 1 Jan 2024 10:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <{i}.bench@example.net>\r\nMIME-Version: 1.0\r\n")
    if i % 3:  # threads of three, for THREAD REFERENCES
        head += f"References: <{i - i % 3}.bench@example.net>\r\n"
    if i % 5 == 0:
        return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                "Content-Type: text/plain; charset=utf-8\r\n\r\n" + "\r\n".join(body_lines)
                + "\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + "QUJD" * 500 + "\r\n--b--\r\n").encode()
    return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + "\r\n".join(body_lines) + "\r\n").encode()


def load(messages: list[bytes], base: Path) -> tuple[Path, Path]:
    ours = base / "mailfleet" / "mail"
    store = MailStore(ours)
    dovecot_mail = base / "dovecot-mail"
    maildir = dovecot_mail / "example.org" / "bench"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    started = time.monotonic()
    for i, data in enumerate(messages):
        flags = ["\\Seen"] if i % 3 else []
        store.deliver(USER, data, flags=flags)
    ours_load = time.monotonic() - started
    store.fts_idle(3600)  # the full-text index, built in the background as the messages arrive
    indexed = time.monotonic() - started
    store.close()
    for i, data in enumerate(messages):
        (maildir / "cur" / f"{1700000000 + i}.M{i}P1.bench:2,{'S' if i % 3 else ''}").write_bytes(data)
    print(f"loaded {len(messages)} messages; Mailfleet deliver(): {len(messages) / ours_load:.0f} msg/s (fsynced),"
          f" full-text index complete {indexed - ours_load:.1f} s after the last delivery")
    return ours, dovecot_mail


def connect(port: int) -> imaplib.IMAP4:
    return imaplib.IMAP4("127.0.0.1", port, timeout=600)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class Client:
    """One benchmark client (one logged-in, selected connection) and the operations it times."""

    def __init__(self, port: int, bodies: list[int], needle: str, messages: int) -> None:
        self.port = port
        self.messages = messages
        self.bodies = bodies
        self.needle = needle
        self.conn = connect(port)
        self.conn.login(USER, PASSWORD)
        self.conn.select("INBOX")

    def login_select(self) -> None:
        conn = connect(self.port)
        conn.login(USER, PASSWORD)
        typ, _ = conn.select("INBOX")
        assert typ == "OK"
        conn.logout()

    def fetch_all(self) -> None:
        typ, data = self.conn.uid("FETCH", "1:*", "(FLAGS ENVELOPE RFC822.SIZE)")
        assert typ == "OK" and data and data[0] is not None

    def header_search(self) -> None:
        typ, data = self.conn.uid("SEARCH", "HEADER", "Subject", self.needle)
        assert typ == "OK" and data[0].split(), data

    def body_search(self) -> None:
        """Three words in a row: in a few hundred of the 10,000 bodies (Dovecot 2.3 from Debian has no FTS
        plugin, fts-flatcurve came with 2.4: it scans the files, which is its default without one)."""
        typ, data = self.conn.uid("SEARCH", "BODY", '"kilo lima mike"')
        assert typ == "OK" and data[0].split(), data

    def fetch_bodies(self) -> None:
        typ, data = self.conn.uid("FETCH", ",".join(map(str, self.bodies)), "(BODY.PEEK[])")
        assert typ == "OK" and sum(1 for d in data if isinstance(d, tuple)) == len(self.bodies)

    def sort_date(self) -> None:
        typ, data = self.conn.uid("SORT", "(DATE)", "UTF-8", "ALL")
        assert typ == "OK" and len(data[0].split()) == self.messages, data[:1]

    def sort_subject(self) -> None:
        typ, data = self.conn.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
        assert typ == "OK" and len(data[0].split()) == self.messages, data[:1]

    def thread_references(self) -> None:
        typ, data = self.conn.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
        assert typ == "OK" and data[0].startswith(b"("), data[:1]


OPERATIONS = (("LOGIN+SELECT", "login_select"), ("UID FETCH 1:* (FLAGS ENVELOPE RFC822.SIZE)", "fetch_all"),
              ("UID SEARCH HEADER Subject", "header_search"), ("UID FETCH {n} x BODY[]", "fetch_bodies"),
              # after FETCH ENVELOPE both servers hold the headers; "cold" is their sort/thread indexes
              # (run with --only SORT,THREAD for them with nothing read before)
              ("UID SORT (DATE)", "sort_date"), ("UID SORT (SUBJECT)", "sort_subject"),
              ("UID THREAD REFERENCES", "thread_references"),
              ("UID SEARCH BODY (3 words)", "body_search"))


def operations(ours: Client, theirs: Client, repeat: int, only: list[str] | None = None
               ) -> list[tuple[str, float, float]]:
    """Each operation once cold, then ``repeat`` warm runs; the two servers take turns run by run so
    that the machine's other load hits both alike. Warm figures are the best run. ``only``: the
    operations whose label contains one of these words."""
    rows = []
    for label, method in OPERATIONS:
        if only and not any(word in label for word in only):
            continue
        label = label.format(n=len(ours.bodies))
        cold = [timed(getattr(client, method)) for client in (ours, theirs)]
        rows.append((label + " (cold)", cold[0], cold[1]))
        warm: list[list[float]] = [[], []]
        for _ in range(repeat):
            for i, client in enumerate((ours, theirs)):
                warm[i].append(timed(getattr(client, method)))
        rows.append((label + " (warm)", min(warm[0]), min(warm[1])))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--bodies", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5, help="warm runs per operation and server")
    parser.add_argument("--only", help="comma-separated words: run only the operations named by them")
    args = parser.parse_args()
    rng = random.Random(42)
    messages = [make_message(i, rng) for i in range(args.messages)]
    base = Path(tempfile.mkdtemp(prefix="mailfleet-imap-bench-"))
    os.chmod(base, 0o755)
    ours_proc = None
    dovecot = None
    try:
        ours_root, dovecot_mail = load(messages, base)
        port = free_port()
        ours_proc = subprocess.Popen([sys.executable, "-c", SERVER, str(ours_root), str(port), USER, PASSWORD],
                                     cwd=ROOT, stdout=subprocess.PIPE)
        assert ours_proc.stdout is not None and ours_proc.stdout.readline().strip() == b"ready"
        dovecot = start_dovecot(base / "dovecot", dovecot_mail, {USER: PASSWORD})
        bodies = rng.sample(range(1, args.messages + 1), min(args.bodies, args.messages))
        needle = f'"#{args.messages // 2 + 7}"'
        only = args.only.split(",") if args.only else None
        rows = operations(Client(port, bodies, needle, args.messages),
                          Client(dovecot.port, bodies, needle, args.messages), args.repeat, only)
        print(f"\n{args.messages} messages, same client (imaplib), loopback, warm = best of {args.repeat}\n")
        print(f"{'operation':<55} {'Mailfleet s':>12} {'Dovecot s':>10} {'ratio':>7}")
        for name, mine, theirs in rows:
            ratio = mine / theirs if theirs else float("inf")
            print(f"{name:<55} {mine:>12.3f} {theirs:>10.3f} {ratio:>7.1f}")
    finally:
        if ours_proc is not None:
            ours_proc.terminate()
            ours_proc.wait(10)
        if dovecot is not None:
            dovecot.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
