"""Clients and evidence for the inbound SMTP tests: a byte-exact raw session, swaks, and what is on disk.

smtplib normalises line endings and dot-stuffs; the smuggling and malformed-command cases need to put exact
bytes on the wire, so `RawSession` writes what it is given and reads replies line by line. `Evidence` answers
the question a mail administrator asks after a 250 or a refusal: where did this message end up, if anywhere?
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers.mailfleet import RunningMailfleet
from peers.smtp_sink import Sink
from waits import wait_until

PASSWORD = "correct horse battery staple"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host has no ::1")

# RFC 2034 §4: status-code SP enhanced-code; the class digit of the enhanced code is the reply's first digit.
ENHANCED = re.compile(r"^(?P<code>\d{3})[ -](?P<cls>[245])\.\d{1,3}\.\d{1,3} \S")


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # each line without the code and separator

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def last_line(self) -> str:
        return f"{self.code} {self.lines[-1]}"

    def has_enhanced_code(self) -> bool:
        match = ENHANCED.match(self.last_line)
        return match is not None and match["cls"] == str(self.code)[0]

    def __str__(self) -> str:
        return " | ".join(f"{self.code} {line}" for line in self.lines)


class RawSession:
    """An SMTP client that sends exactly the bytes it is given (bare CR/LF included)."""

    def __init__(self, host: str, port: int, source: str | None = None, timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self._buf = b""
        self.greeting = self.reply()

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection; unread: {self._buf!r}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def reply(self) -> Reply:
        lines: list[str] = []
        while True:
            raw = self._line().decode("utf-8", "replace")
            if len(raw) < 3 or not raw[:3].isdigit() or (len(raw) > 3 and raw[3] not in " -"):
                raise AssertionError(f"not an SMTP reply line: {raw!r}")
            lines.append(raw[4:])
            if len(raw) == 3 or raw[3] == " ":
                return Reply(int(raw[:3]), tuple(lines))

    def cmd(self, line: str | bytes) -> Reply:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self.send(data + b"\r\n")
        return self.reply()

    def ehlo(self, name: str = "client.test") -> Reply:
        reply = self.cmd(f"EHLO {name}")
        assert reply.code == 250, reply
        return reply

    def starttls(self, context: ssl.SSLContext, server_hostname: str | None = None) -> Reply:
        """STARTTLS, then the TLS handshake; bytes the server sent before it are kept for `pending()`."""
        reply = self.cmd("STARTTLS")
        assert reply.code == 220, reply
        assert not self._buf, f"plaintext after the 220: {self._buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        return reply

    def pending(self, wait: float = 0.3) -> bytes:
        """Bytes the server sent that no command asked for (e.g. replies to smuggled commands)."""
        self.sock.settimeout(wait)
        extra = self._buf
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                extra += chunk
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(10.0)
        self._buf = b""
        return extra


def swaks(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Debian's swaks; its transcript goes to stdout (`<-` server lines, `->` client lines, `<~` under TLS)."""
    return subprocess.run(["swaks", "--hide-informational", *args], capture_output=True, text=True, timeout=timeout)


def server_lines(transcript: str) -> list[str]:
    """The server's reply lines from a swaks transcript, without the direction markers."""
    out = []
    for line in transcript.splitlines():
        marker, _, text = line.partition(" ")
        if marker in ("<-", "<~", "<**", "<~*"):
            out.append(text.strip())
    return out


def world(sink: Sink) -> dict:
    """Delivery settings every test host gets: mail not routed locally goes to a loopback sink, never by MX."""
    return {"smarthost": f"{sink.address}:{sink.port}"}


def marker() -> str:
    """A unique string to put into a message, to find it (or prove it absent) on disk and at the sinks."""
    return f"mf-{uuid.uuid4().hex}"


def message(mark: str, subject: str = "test", extra_body: str = "") -> bytes:
    return (f"From: sender@client.example\r\nTo: someone@example.org\r\nSubject: {subject} {mark}\r\n"
            f"Message-ID: <{mark}@client.example>\r\n\r\nbody {mark}\r\n{extra_body}").encode()


def queue_id_of(reply_text: str) -> str:
    match = re.search(r"queued as ([0-9A-F]+)", reply_text)
    assert match, f"no queue id in {reply_text!r}"
    return match[1]


@dataclass
class Evidence:
    """Where a message (found by its marker) is on one host: spool, mailboxes, the sinks it delivers to."""

    server: RunningMailfleet
    sinks: tuple[Sink, ...] = ()

    def spool_files(self, mark: str) -> list[Path]:
        spool = self.server.data_dir / "spool"
        return [p for sub in ("msg", "tmp") for p in sorted((spool / sub).glob("*"))
                if p.is_file() and mark.encode() in p.read_bytes()]

    def mailbox_files(self, mark: str) -> list[Path]:
        root = self.server.data_dir / "mail"
        found = []
        for path in sorted(root.glob("*/*/**/*")):
            if path.is_file() and path.parent.name in ("new", "cur", "tmp") and mark.encode() in path.read_bytes():
                found.append(path)
        return found

    def sink_messages(self, mark: str) -> list:
        return [m for sink in self.sinks for m in sink.messages if mark.encode() in m.data]

    def everywhere(self, mark: str) -> list:
        return [*self.spool_files(mark), *self.mailbox_files(mark), *self.sink_messages(mark)]

    def assert_nothing(self, mark: str, settle: float = 0.0) -> None:
        """A refused message leaves nothing behind: no spool file, no mailbox file, nothing at any sink.

        `settle` is how long the server may take to tidy up after the refusal it has answered (a partial file
        in spool/tmp/ goes after the reply). Anything it had accepted would be on disk before its reply, and
        a file moves by rename, so a copy never hides while this looks.
        """
        wait_until(lambda: not self.everywhere(mark), settle, f"refused message {mark} to leave no traces",
                   detail=lambda: f"traces: {self.everywhere(mark)}")

    def assert_on_disk(self, queue_id: str, mark: str) -> None:
        """A 250 is true at the moment it is given: the message is in the spool or already delivered."""
        in_spool = (self.server.data_dir / "spool" / "msg" / queue_id).exists()
        assert in_spool or self.mailbox_files(mark) or self.sink_messages(mark), (
            f"250 for {queue_id} but the message is neither in the spool nor delivered")

    def wait_mailbox(self, address: str, mark: str, count: int = 1) -> list[Path]:
        def found() -> list[Path]:
            return [p for p in self.server.mailbox_files(address) if mark.encode() in p.read_bytes()]
        self.server.wait_for(lambda: len(found()) >= count, what=f"{count} message(s) {mark} in {address}")
        self._wait_delivered(mark)
        return found()

    def wait_sink(self, sink: Sink, mark: str, count: int = 1) -> list:
        def found() -> list:
            return [m for m in sink.messages if mark.encode() in m.data]
        self.server.wait_for(lambda: len(found()) >= count, what=f"{count} message(s) {mark} at {sink.port}")
        self._wait_delivered(mark)
        return found()

    def _wait_delivered(self, mark: str) -> None:
        """Wait until the spool holds no copy of the message: no further delivery of it (a duplicate that the
        caller's count would catch) can start after that."""
        self.server.wait_for(lambda: not self.spool_files(mark), what=f"message {mark} to leave the spool")

    def wait_spool_empty(self) -> None:
        self.server.wait_for(lambda: not self.server.queue_ids(), what="an empty spool")


@dataclass
class Transaction:
    mail: Reply
    rcpts: dict[str, Reply]
    data: Reply | None  # the final reply to the message (None when DATA itself was refused)
    data_command: Reply

    @property
    def queue_id(self) -> str:
        assert self.data is not None and self.data.code == 250, self
        return queue_id_of(self.data.text)


def send(port: int, rcpts: list[str], mark: str, *, host: str = "127.0.0.1", source: str | None = None,
         mail_from: str = "sender@client.example", mail_params: str = "", body: bytes | None = None) -> Transaction:
    """One transaction over a raw session; DATA is tried even when every recipient was refused."""
    with RawSession(host, port, source) as session:
        session.ehlo()
        mail = session.cmd(f"MAIL FROM:<{mail_from}>{' ' + mail_params if mail_params else ''}")
        replies = {rcpt: session.cmd(f"RCPT TO:<{rcpt}>") for rcpt in rcpts}
        data_command = session.cmd("DATA")
        final = None
        if data_command.code == 354:
            session.send((body if body is not None else message(mark)) + b".\r\n")
            final = session.reply()
        session.cmd("QUIT")
    return Transaction(mail, replies, final, data_command)
