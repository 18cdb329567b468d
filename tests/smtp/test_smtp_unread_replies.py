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

import pytest
from peers.flood import Flood, reset_peak, vm_status
from peers.mailfleet import RunningMailfleet

PAIR = b"HELP\r\nNOOP\r\n"
PAYLOAD = 24 * 1024 * 1024
RSS_BOUND = 64 * 1024 * 1024  # far above what a session holds (one batch of replies), far below the attack


@pytest.fixture(scope="module")
def server(module_mailfleet) -> RunningMailfleet:
    # One process (smtp.workers 0): the session and the RSS measured are in the same process.
    return module_mailfleet({"roles": ["primary"], "primary": {"domains": ["example.org"]},
                             "smtp": {"workers": 0}}, name="unread")


def test_a_client_that_does_not_read_is_held_back_not_buffered(server: RunningMailfleet) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    before = reset_peak(pid)

    attacker = Flood(server.smtp_port, "127.0.37.1")
    payload = PAIR * (PAYLOAD // len(PAIR))
    sent = attacker.send_until_stalled(payload)

    # Meanwhile another client is served as usual.
    with smtplib.SMTP("127.0.0.1", server.smtp_port, source_address=("127.0.37.2", 0), timeout=30) as other:
        assert other.ehlo()[0] == 250
        assert other.noop()[0] == 250
    peak = vm_status(pid, "VmHWM") - before

    # The attacker reads at last: the rest of the command it was sending, then QUIT, and every reply.
    commands = -(-sent // 6)  # each command is 6 octets; the one cut short is completed here
    received = attacker.finish(payload[sent: commands * 6] + b"QUIT\r\n")
    peak = max(peak, vm_status(pid, "VmHWM") - before)

    assert peak < RSS_BOUND, f"the server's RSS grew by {peak >> 20} MB for a client that did not read"
    lines = received.split(b"\r\n")
    assert lines[0].startswith(b"220 "), lines[0]
    assert lines[-2:] == [b"221 2.0.0 Bye", b""], lines[-3:]
    replies = lines[1:-2]
    assert len(replies) == commands
    help_reply, noop_reply = replies[0], b"250 2.0.0 OK"
    assert help_reply.startswith(b"250 2.0.0 Supported commands: "), help_reply
    assert replies == [help_reply, noop_reply] * (commands // 2) + [help_reply] * (commands % 2)
