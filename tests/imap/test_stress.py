"""Several sessions hammer one mailbox at once (the kind of load an IMAP stress tester applies):
every command is answered OK/NO (never BAD or an internal error), no FETCH shows a keyword before
``* FLAGS`` announced it (another session's new keywords included), \\Recent goes to one session only,
and at the end every session agrees with the store on UIDs and flags."""

from __future__ import annotations

import random
import re
import threading

from tests.imap.conftest import ImapServer, RawClient

MSG = b"From: s@example.net\r\nSubject: stress %d\r\n\r\nbody %d\r\n"
FETCH_LINE = re.compile(rb"^\* (\d+) FETCH \((.*)\)\r\n$", re.S)


def session(server: ImapServer, seed: int, recent: dict[int, set[int]], errors: list[str]) -> None:
    rng = random.Random(seed)
    client = RawClient(server.host, server.port)
    client.login()
    client.command("s", "SELECT INBOX")
    commands = [
        lambda: f"APPEND INBOX {{{len(MSG % (seed, seed))}+}}\r\n" + (MSG % (seed, seed)).decode(),
        lambda: "NOOP",
        lambda: f"UID STORE {rng.randint(1, 60)}:{rng.randint(1, 60)} +FLAGS (\\Flagged)",
        lambda: f"UID STORE {rng.randint(1, 60)} -FLAGS (\\Flagged $x)",
        lambda: f"UID STORE {rng.randint(1, 60)} +FLAGS (\\Deleted)",
        lambda: "UID EXPUNGE 1:*" if rng.random() < 0.5 else "EXPUNGE",
        lambda: "UID FETCH 1:* (UID FLAGS)",
        lambda: "UID SEARCH FLAGGED",
        lambda: f"UID COPY {rng.randint(1, 60)} Archive",
        lambda: f"UID MOVE {rng.randint(1, 60)} Trash",
        lambda: "CHECK",
        lambda: f"UID STORE {rng.randint(1, 60)} +FLAGS ($kw{seed}x{rng.randint(1, 9)})",  # new keywords
        lambda: "FETCH 1:* FLAGS",
    ]
    announced: set[bytes] = set()
    for i in range(80):
        command = rng.choice(commands)()
        reply = client.command(f"t{i}", command)
        status = reply[-1].split(b" ")[1]
        if status not in (b"OK", b"NO") or any(b"SERVERBUG" in line for line in reply):
            errors.append(f"{command!r}: {reply[-3:]!r}")
        for line in reply:
            if line.startswith(b"* FLAGS ("):
                announced = set(line[9:line.rindex(b")")].split())
            flags = re.search(rb"^\* \d+ FETCH .*FLAGS \(([^)]*)\)", line)
            if flags and {f for f in flags.group(1).split() if not f.startswith(b"\\")} - announced:
                errors.append(f"{command!r}: a keyword before * FLAGS announced it (RFC 3501 §7.2.6): {line!r}")
            match = FETCH_LINE.match(line)
            if match and b"\\Recent" in match.group(2):
                uid = re.search(rb"UID (\d+)", match.group(2))
                if uid:
                    recent.setdefault(int(uid.group(1)), set()).add(seed)
    client.close()


def test_parallel_sessions_keep_the_mailbox_consistent(imap_server: ImapServer) -> None:
    for i in range(20):
        imap_server.deliver(MSG % (i, i))
    recent: dict[int, set[int]] = {}
    errors: list[str] = []
    threads = [threading.Thread(target=session, args=(imap_server, seed, recent, errors)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:5]
    assert all(len(holders) == 1 for holders in recent.values()), recent  # RFC 3501 §2.3.2
    account = imap_server.store.account("alice@example.org")
    expected = {m.uid: set(m.flags) for m in account.messages("INBOX")}
    for _ in range(2):
        client = RawClient(imap_server.host, imap_server.port)
        client.login()
        client.command("s", "SELECT INBOX")
        reply = client.command("f", "UID FETCH 1:* (UID FLAGS)") if expected else []
        seen = {}
        for line in reply[:-1]:
            match = FETCH_LINE.match(line)
            assert match, line
            uid = int(re.search(rb"UID (\d+)", match.group(2)).group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", match.group(2)).group(1).decode().split()
            seen[uid] = set(flags) - {"\\Recent"}
        assert seen == expected
        client.close()
