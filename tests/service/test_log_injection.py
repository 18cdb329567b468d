"""Log injection (issue 15): ``EHLO evil\\r<fake log line>\\x1b[2K`` put a raw CR and ESC into the log.

Each attack sends client text carrying a CR (or, where the protocol refuses a CR, ESC sequences that move up
a terminal line), an ESC sequence that erases a line, and a forged log record, through a place where the
appliance logs what the client said: the HELO name (the queue line), an SMTP AUTH user name, a POP3 USER name
and an IMAP LOGIN literal. Afterwards the service's log (what journald or a terminal shows) holds no CR and no
ESC at all, the forged record never starts a line, and every line that carries the client's text is one of
the appliance's own records, with the control characters escaped.
"""

from __future__ import annotations

import base64
import re
import socket
import uuid

import pytest
from peers.mailfleet import RunningMailfleet

PASSWORD = "log injection"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) (\[smtp-worker-\d+\] )?appliance\.[a-z.]+: ")


def attack(mark: str, cr: bool = True) -> str:
    """Client text that would forge a record and hide the line it ends, were it logged as it is (short enough
    to be logged whole where user names are cut at 64 characters); without a CR, the ESC sequences move up a
    line and erase it on a terminal."""
    new_line = "\r" if cr else "\x1b[1A"
    return f"evil{new_line}\x1b[2K2026-12-03 12:00:00,000 INFO x: {mark}"


def escaped(text: str) -> str:
    """How the log shows it: CR and ESC as Python writes them."""
    return text.replace("\r", "\\r").replace("\x1b", "\\x1b")


@pytest.fixture
def server(mailfleet_factory) -> RunningMailfleet:
    server = mailfleet_factory({"roles": ["primary"], "primary": {"domains": ["example.org"]}},
                               services=("smtp", "submission", "imap", "pop3"), name="loginject")
    added = server.cli("user", "add", "alice@example.org", "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    return server


class Raw:
    """A line client that sends exactly the given bytes, from one of the test's 127.0.37.x addresses."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.line()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def smtp(client: Raw, command: bytes) -> bytes:
    """The last line of the reply to ``command``."""
    line = client.send(command)
    while line[3:4] == b"-":
        line = client.line()
    return line


def assert_clean_log(server: RunningMailfleet, sent: dict[str, str]) -> dict[str, list[str]]:
    """No CR or ESC in the log; each mark only inside the appliance's own records, with what was sent escaped;
    the lines per mark."""
    raw = server.log_path.read_bytes()
    assert b"\r" not in raw and b"\x1b" not in raw, "a control character from a client reached the log"
    lines = raw.decode("utf-8", "replace").split("\n")
    found = {}
    for mark, text in sent.items():
        carrying = [line for line in lines if mark in line]
        assert carrying, f"{mark} was not logged at all"
        for line in carrying:
            assert RECORD.match(line), f"not one of the appliance's records: {line!r}"
            assert escaped(text) in line, line
        found[mark] = carrying
    return found


def test_client_text_reaches_the_log_escaped_one_record_per_line(server: RunningMailfleet) -> None:
    helo, smtp_user, pop3_user, imap_user = (f"forged-{uuid.uuid4().hex[:8]}" for _ in range(4))
    # POP3 refuses a CR inside a command line (appliance.pop3.parser): there the ESC-only form is sent.
    sent = {helo: attack(helo), smtp_user: attack(smtp_user), pop3_user: attack(pop3_user, cr=False),
            imap_user: attack(imap_user)}

    mx = Raw(server.ports["smtp"], "127.0.37.5")
    assert mx.line().startswith(b"220 ")
    assert smtp(mx, b"EHLO " + sent[helo].encode() + b"\r\n").startswith(b"250 ")
    assert smtp(mx, b"MAIL FROM:<sender@client.example>\r\n").startswith(b"250 ")
    assert smtp(mx, b"RCPT TO:<alice@example.org>\r\n").startswith(b"250 ")
    assert smtp(mx, b"DATA\r\n").startswith(b"354 ")
    assert smtp(mx, b"Subject: hello\r\n\r\nhello\r\n.\r\n").startswith(b"250 ")
    mx.close()

    submission = Raw(server.ports["submission"], "127.0.37.6")
    assert submission.line().startswith(b"220 ")
    assert smtp(submission, b"EHLO client.example\r\n").startswith(b"250 ")
    blob = base64.b64encode(b"\0" + sent[smtp_user].encode() + b"\0wrong password")
    assert smtp(submission, b"AUTH PLAIN " + blob + b"\r\n").startswith(b"535 ")
    submission.close()

    pop3 = Raw(server.ports["pop3"], "127.0.37.7")
    assert pop3.line().startswith(b"+OK")
    assert pop3.send(b"USER " + sent[pop3_user].encode() + b"\r\n").startswith(b"+OK")
    assert pop3.send(b"PASS wrong password\r\n").startswith(b"-ERR")
    pop3.close()

    imap = Raw(server.ports["imap"], "127.0.37.8")
    assert imap.line().startswith(b"* OK")
    user = sent[imap_user].encode()
    assert imap.send(b"a1 LOGIN {%d}\r\n" % len(user)).startswith(b"+")
    assert imap.send(user + b" wrong\r\n").startswith(b"a1 NO")
    imap.close()

    for mark in (helo, smtp_user, pop3_user, imap_user):
        server.wait_for_log(mark)
    found = assert_clean_log(server, sent)
    [queued] = found[helo]  # the message's one line, HELO name and all
    assert "queue_id=" in queued and "result=250" in queued
