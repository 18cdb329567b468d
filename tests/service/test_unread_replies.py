"""IMAP and POP3 against a client that pipelines commands and never reads (issue 15's attack on the other
listeners): both write each response through a StreamWriter and wait for it to drain, so the session stops
reading while its replies are not taken. A flood of CAPABILITY/CAPA (about ten octets of reply per octet sent:
240 MB of replies if they were buffered) from 127.0.37.20 must leave the server's peak RSS within 64 MB of where
it was; once the client reads, every reply is there, in order."""

from __future__ import annotations

import pytest
from peers.flood import Flood, reset_peak, vm_status
from peers.mailfleet import RunningMailfleet

PAYLOAD = 24 * 1024 * 1024
RSS_BOUND = 64 * 1024 * 1024


@pytest.fixture
def server(mailfleet_factory) -> RunningMailfleet:
    return mailfleet_factory({"roles": ["primary"], "primary": {"domains": ["example.org"]}, "smtp": {"workers": 0}},
                             services=("smtp", "imap", "pop3"), name="unread")


# (service, one command, its reply's lines, the command that ends the session)
CASES = [
    pytest.param("imap", b"a CAPABILITY\r\n", 2, b"z LOGOUT\r\n", id="imap"),
    pytest.param("pop3", b"CAPA\r\n", None, b"QUIT\r\n", id="pop3"),
]


@pytest.mark.parametrize(("service", "command", "reply_lines", "logout"), CASES)
def test_a_client_that_does_not_read_is_held_back(server: RunningMailfleet, service: str, command: bytes,
                                                  reply_lines: int | None, logout: bytes) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    before = reset_peak(pid)
    flood = Flood(server.ports[service], "127.0.37.20")
    payload = command * (PAYLOAD // len(command))
    sent = flood.send_until_stalled(payload)
    commands = -(-sent // len(command))
    received = flood.finish(payload[sent: commands * len(command)] + logout)
    peak = vm_status(pid, "VmHWM") - before
    assert peak < RSS_BOUND, f"the server's RSS grew by {peak >> 20} MB for a client that did not read"

    lines = received.split(b"\r\n")
    if service == "imap":
        replies = [line for line in lines if line == b"a OK Capability completed."]
        assert lines[0].startswith(b"* OK") and b"z OK" in lines[-2], lines[-3:]
    else:  # RFC 2449: CAPA's +OK, the capability lines, the "." that ends them
        replies = [line for line in lines if line == b"."]
        assert lines[0].startswith(b"+OK") and lines[-2].startswith(b"+OK"), lines[-3:]
    assert len(replies) == commands
    block = lines[1: lines.index(replies[0]) + 1]  # the first command's reply
    assert lines[1: 1 + commands * len(block)] == block * commands
