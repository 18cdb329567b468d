"""Session lifetime in the SMTP engine: an idle client is told 421 and closed after smtp.idle_timeout, a busy one
is not; a failed TLS handshake ends only that session, and the session limit still counts right afterwards."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from waits import wait_until

from .probes import Evidence, RawSession


@pytest.fixture(scope="module")
def host(module_mailfleet) -> Evidence:
    server = module_mailfleet({
        "roles": ["primary"],
        "primary": {"domains": ["example.org"], "users": [{"address": "alice@example.org", "password_hash": None}]},
        "smtp": {"idle_timeout": "2s", "max_sessions": 3},
    }, name="sessions")
    return Evidence(server, ())


def test_idle_session_gets_421_and_is_closed(host):
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        started = time.monotonic()
        reply = session.reply()  # nothing sent: the next thing we hear is the server giving up
        assert reply.code == 421 and reply.lines[0].startswith("4.4.2")
        assert time.monotonic() - started >= 1.5
        assert session.sock.recv(100) == b""  # and it hung up


def test_active_session_is_not_cut(host):
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        for _ in range(6):  # 3 s of activity, longer than the timeout, never 2 s quiet
            time.sleep(0.5)  # a slow client is the thing under test
            assert session.cmd("NOOP").code == 250
        assert session.cmd("QUIT").code == 221


def test_failed_tls_handshake_frees_its_session_slot(host):
    for n in range(6):  # twice max_sessions (3): slots kept by failed handshakes would show as 421 below
        with RawSession("127.0.0.1", host.server.smtp_port) as session:
            session.ehlo()
            assert session.cmd("STARTTLS").code == 220
            # Bytes sent before the server has turned the socket over to TLS would be read as SMTP commands;
            # the client cannot see that moment, so it gives the server a moment to reach it.
            time.sleep(0.1)
            if n % 2:
                session.send(b"this is not a TLS ClientHello\r\n" * 4)  # the server gives up
                session.sock.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    assert session.sock.recv(100) == b""
            else:
                session.send(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, then the client leaves
    # max_sessions (3) sessions at once: each must be greeted, none told 421. A slot is freed when the server
    # has seen the failed handshake's end, a moment after the client left; one kept for good never frees.
    def banners() -> list[bytes]:
        probes = [socket.create_connection(("127.0.0.1", host.server.smtp_port), timeout=5) for _ in range(3)]
        try:
            return [probe.recv(200) for probe in probes]
        finally:
            for probe in probes:
                probe.close()

    seen: list[list[bytes]] = []
    wait_until(lambda: seen.append(banners()) or all(b.startswith(b"220 ") for b in seen[-1]), 10,
               "max_sessions sessions at once all greeted with 220", detail=lambda: f"last banners: {seen[-1]}")
