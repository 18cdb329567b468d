"""A client that pipelines commands and never reads the replies (issue 15): the server stops reading.

Before flow control, 150 MB of pipelined NOOP never read raised the service's RSS from 140 to 481 MB: every
reply waited in the transport's buffer. Now, past the transport's high-water mark the session stops reading,
the commands wait in the kernel's socket buffers and TCP holds the client back. The attack here sends 24 MB of
HELP/NOOP pairs (about 9 octets of reply per octet sent: 220 MB of replies if the server buffered them) from
127.0.37.1; the server's peak RSS must stay within 64 MB of where it was, another client must be served
meanwhile, and once the attacker reads, every reply arrives, in order.
"""

from __future__ import annotations

import smtplib
import socket
import threading
from pathlib import Path

import pytest
from peers.mailfleet import RunningMailfleet

ATTACKER = "127.0.37.1"
OTHER = "127.0.37.2"
PAIR = b"HELP\r\nNOOP\r\n"
PAYLOAD = 24 * 1024 * 1024
RSS_BOUND = 64 * 1024 * 1024  # far above what a session holds (one batch of replies), far below the attack
STALL = 5.0  # the attacker stops sending once a send has made no progress for this long


@pytest.fixture(scope="module")
def server(module_mailfleet) -> RunningMailfleet:
    # One process (smtp.workers 0): the session and the RSS measured are in the same process.
    return module_mailfleet({"roles": ["primary"], "primary": {"domains": ["example.org"]},
                             "smtp": {"workers": 0}}, name="unread")


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status memory figure, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (proc(5), clear_refs "5"), so that the peak is this test's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # an older kernel: the peak then includes start-up, which only makes the bound stricter


def _send_until_stalled(sock: socket.socket, payload: bytes) -> int:
    """Send as an attacker that never reads would: as much as the connection takes; the bytes sent."""
    sock.settimeout(STALL)
    view = memoryview(payload)
    sent = 0
    try:
        while sent < len(payload):
            sent += sock.send(view[sent: sent + 1024 * 1024])
    except TimeoutError:
        pass
    return sent


def _read_all(sock: socket.socket, into: list[bytes]) -> None:
    sock.settimeout(120)
    while chunk := sock.recv(1 << 20):
        into.append(chunk)


def test_a_client_that_does_not_read_is_held_back_not_buffered(server: RunningMailfleet) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    _reset_peak(pid)
    before = _status(pid, "VmHWM")

    attacker = socket.create_connection(("127.0.0.1", server.smtp_port), source_address=(ATTACKER, 0))
    payload = PAIR * (PAYLOAD // len(PAIR))
    sent = _send_until_stalled(attacker, payload)

    # Meanwhile another client is served as usual.
    with smtplib.SMTP("127.0.0.1", server.smtp_port, source_address=(OTHER, 0), timeout=30) as other:
        assert other.ehlo()[0] == 250
        assert other.noop()[0] == 250
    peak = _status(pid, "VmHWM") - before

    # The attacker reads at last: the rest of the command it was sending, then QUIT, and every reply.
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(attacker, chunks))
    reader.start()
    attacker.settimeout(120)
    attacker.sendall(payload[sent: -(-sent // 6) * 6] + b"QUIT\r\n")
    reader.join(180)
    assert not reader.is_alive(), "the replies did not end with the connection"
    attacker.close()
    peak = max(peak, _status(pid, "VmHWM") - before)

    assert peak < RSS_BOUND, f"the server's RSS grew by {peak >> 20} MB for a client that did not read"
    lines = b"".join(chunks).split(b"\r\n")
    assert lines[0].startswith(b"220 "), lines[0]
    assert lines[-2:] == [b"221 2.0.0 Bye", b""], lines[-3:]
    replies = lines[1:-2]
    commands = -(-sent // 6)  # each command is 6 octets; the one cut short was completed above
    assert len(replies) == commands
    help_reply, noop_reply = replies[0], b"250 2.0.0 OK"
    assert help_reply.startswith(b"250 2.0.0 Supported commands: "), help_reply
    assert replies == [help_reply, noop_reply] * (commands // 2) + [help_reply] * (commands % 2)
