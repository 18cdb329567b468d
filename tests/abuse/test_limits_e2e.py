"""Per-client limits against a running appliance: real SMTP clients from several 127.0.31.x addresses, with the
SMTP engine in one process (smtp.workers 0) and in acceptor processes (2), which share the counts."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
from typing import Any

import pytest
from peers.mailfleet import MAILFLEET as MAILFLEET_CMD

ATTACKER, OTHER = "127.0.31.1", "127.0.31.2"


def gateway(sink_port: int, workers: int, limits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An incoming gateway whose limits apply to loopback clients too (exempt: nothing)."""
    return {"roles": ["incoming_gateway"], "smtp": {"workers": workers, "max_sessions": 40},
            "limits": {"exempt": [], "rate_window": "1h", **limits},
            "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{sink_port}"]}}}, **extra}


class Client:
    """An SMTP client from a chosen source address: a raw socket, to hold a session open and read each reply."""

    def __init__(self, source: str, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            if not line:
                return "".join(lines) or "<closed>"
            lines.append(line)
            if line[3:4] != "-":
                return "".join(lines)

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """The server closed the connection (end of stream after what it sent)."""
        return self.file.read() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def greeted(source: str, port: int) -> bool:
    client = Client(source, port)
    client.close()
    return client.greeting.startswith("220 ")


def workers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "smtp-worker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(params=[0, 2], ids=["one-process", "two-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return request.param


def test_one_address_cannot_take_every_session(mailfleet_factory, smtp_sink, workers) -> None:
    """The issue's attack: idle sessions from one address until the service is full. The address gets its 50
    (here 5); the rest is refused with 421 4.7.0 and closed, and another client is still greeted."""
    server = mailfleet_factory(gateway(smtp_sink().port, workers, {"client": {"sessions": 5}}))
    held, refused = [], []
    try:
        for _ in range(45):  # more than smtp.max_sessions (40): without the limit the service would be full
            client = Client(ATTACKER, server.smtp_port)
            (held if client.greeting.startswith("220 ") else refused).append(client)
        assert len(held) == 5
        assert len(refused) == 40
        assert {c.greeting for c in refused} == {
            "421 4.7.0 Too many sessions from your address 127.0.31.1 (limit 5); try again later\r\n"}
        assert all(c.closed() for c in refused)
        other = Client(OTHER, server.smtp_port)
        assert other.greeting.startswith("220 ")
        assert other.command("EHLO other.test").startswith("250")
        other.close()
        # A session that ends gives its place back.
        assert held.pop().command("QUIT").startswith("221")
        again = Client(ATTACKER, server.smtp_port)
        assert again.greeting.startswith("220 "), again.greeting
        held.append(again)
    finally:
        for client in held + refused:
            client.close()


def test_the_limit_holds_across_acceptor_processes(mailfleet_factory, smtp_sink) -> None:
    """Sessions on one acceptor count on the other: with the second one stopped the first takes three, then
    with the first stopped the second may take only the two that are left."""
    server = mailfleet_factory(gateway(smtp_sink().port, 2, {"client": {"sessions": 5}}))
    assert server.proc is not None
    server.wait_for(lambda: len(workers_of(server.proc.pid)) == 2, what="two acceptors")
    first, second = workers_of(server.proc.pid)
    clients = []
    try:
        os.kill(second, signal.SIGSTOP)
        clients += [Client(ATTACKER, server.smtp_port) for _ in range(3)]
        os.kill(second, signal.SIGCONT)
        os.kill(first, signal.SIGSTOP)
        clients += [Client(ATTACKER, server.smtp_port) for _ in range(3)]
        os.kill(first, signal.SIGCONT)
        assert [c.greeting[:3] for c in clients] == ["220"] * 5 + ["421"]
        assert "limit 5" in clients[-1].greeting
    finally:
        for pid in (first, second):
            os.kill(pid, signal.SIGCONT)
        for client in clients:
            client.close()


def test_a_killed_acceptors_sessions_do_not_stay_counted(mailfleet_factory, smtp_sink) -> None:
    server = mailfleet_factory(gateway(smtp_sink().port, 2, {"client": {"sessions": 4}}))
    assert server.proc is not None
    server.wait_for(lambda: len(workers_of(server.proc.pid)) == 2, what="two acceptors")
    victim, other = workers_of(server.proc.pid)
    os.kill(other, signal.SIGSTOP)  # every session lands on the victim
    try:
        held = [Client(ATTACKER, server.smtp_port) for _ in range(4)]
    finally:
        os.kill(other, signal.SIGCONT)
    assert [c.greeting[:3] for c in held] == ["220"] * 4
    refused = Client(ATTACKER, server.smtp_port)
    assert refused.greeting.startswith("421 4.7.0 Too many sessions")
    os.kill(victim, signal.SIGKILL)
    assert all(c.closed() for c in held)  # the sessions died with their process
    server.wait_for(lambda: "exited with -9" in server.log(), what="the queue process to reap the victim")
    again = [Client(ATTACKER, server.smtp_port) for _ in range(4)]
    assert [c.greeting[:3] for c in again] == ["220"] * 4
    for client in [*held, refused, *again]:
        client.close()


def test_a_network_shares_one_limit(mailfleet_factory, smtp_sink, workers) -> None:
    """Addresses of one /25 (here) together hold at most network.sessions; the next network is apart."""
    server = mailfleet_factory(gateway(smtp_sink().port, workers, {
        "ipv4_prefix": 25, "client": {"sessions": 3}, "network": {"sessions": 4}}))
    clients = [Client(ATTACKER, server.smtp_port) for _ in range(3)] + [Client(OTHER, server.smtp_port)]
    try:
        assert [c.greeting[:3] for c in clients] == ["220"] * 4
        over = Client("127.0.31.3", server.smtp_port)
        clients.append(over)
        assert over.greeting == ("421 4.7.0 Too many sessions from your network 127.0.31.0/25 (limit 4); "
                                 "try again later\r\n")
        beyond = Client("127.0.31.200", server.smtp_port)
        clients.append(beyond)
        assert beyond.greeting.startswith("220 ")
    finally:
        for client in clients:
            client.close()


def test_connection_message_and_recipient_rates(mailfleet_factory, smtp_sink, workers) -> None:
    sink = smtp_sink()
    server = mailfleet_factory(gateway(sink.port, workers, {
        "client": {"connection_rate": 3, "message_rate": 2, "recipient_rate": 3}}))
    greetings = []
    for _ in range(4):
        client = Client(ATTACKER, server.smtp_port)
        greetings.append(client.greeting)
        client.close()
    assert [g[:3] for g in greetings] == ["220"] * 3 + ["421"]
    assert greetings[-1] == ("421 4.7.0 Too many connections from your address 127.0.31.1 (limit 3 per 1h); "
                             "try again later\r\n")

    mailer = Client(OTHER, server.smtp_port)
    assert mailer.command("EHLO other.test").startswith("250")
    assert mailer.command("MAIL FROM:<s@outside.test>").startswith("250")
    assert [mailer.command(f"RCPT TO:<r{i}@fwd.test>")[:3] for i in range(3)] == ["250"] * 3
    assert mailer.command("RCPT TO:<r3@fwd.test>") == (
        "421 4.7.0 Too many recipients from your address 127.0.31.2 (limit 3 per 1h); try again later\r\n")
    assert mailer.closed()

    mailer = Client("127.0.31.3", server.smtp_port)
    assert mailer.command("EHLO third.test").startswith("250")
    assert mailer.command("MAIL FROM:<s@outside.test>").startswith("250")
    assert mailer.command("RSET").startswith("250")
    # Pipelined: the 421 ends the session, and the command behind it is never answered.
    mailer.sock.sendall(b"MAIL FROM:<s@outside.test>\r\nRSET\r\nMAIL FROM:<s@outside.test>\r\nNOOP\r\n")
    assert [mailer.reply()[:3] for _ in range(3)] == ["250", "250", "421"]
    assert mailer.closed()


def test_exempt_clients_are_not_limited(mailfleet_factory, smtp_sink, workers) -> None:
    server = mailfleet_factory(gateway(smtp_sink().port, workers, {
        "exempt": ["127.0.31.0/28"], "client": {"sessions": 2}}))
    clients = [Client(ATTACKER, server.smtp_port) for _ in range(6)]
    outsider = [Client("127.0.31.100", server.smtp_port) for _ in range(3)]
    try:
        assert [c.greeting[:3] for c in clients] == ["220"] * 6
        assert [c.greeting[:3] for c in outsider] == ["220", "220", "421"]
    finally:
        for client in clients + outsider:
            client.close()


def test_the_default_exempts_loopback(mailfleet_factory, smtp_sink) -> None:
    config = gateway(smtp_sink().port, 0, {"client": {"sessions": 2}})
    del config["limits"]["exempt"]
    server = mailfleet_factory(config)
    clients = [Client(ATTACKER, server.smtp_port) for _ in range(5)]
    try:
        assert [c.greeting[:3] for c in clients] == ["220"] * 5
    finally:
        for client in clients:
            client.close()


def test_relay_clients_have_their_own_limits(mailfleet_factory, smtp_sink, workers) -> None:
    sink = smtp_sink()
    config = gateway(sink.port, workers, {"client": {"sessions": 1, "message_rate": 1},
                                          "relay": {"sessions": 3, "message_rate": 0}})
    config["roles"].append("outgoing_gateway")
    config["outgoing_gateway"] = {"relay_networks": ["127.0.31.64/26"]}
    server = mailfleet_factory(config)
    relay = [Client("127.0.31.70", server.smtp_port) for _ in range(4)]
    try:
        assert [c.greeting[:3] for c in relay] == ["220", "220", "220", "421"]
        assert relay[-1].greeting.startswith("421 4.7.0 Too many sessions from relay client 127.0.31.70 (limit 3)")
        # Its mail is not limited by client.message_rate (1).
        with smtplib.SMTP("127.0.0.1", server.smtp_port, source_address=("127.0.31.71", 0), timeout=10) as conn:
            for i in range(3):
                conn.sendmail("app@inside.test", [f"someone{i}@far.test"], b"Subject: relayed\r\n\r\nx\r\n")
    finally:
        for client in relay:
            client.close()


@pytest.fixture
def primary(mailfleet_factory, workers):
    password_hash = subprocess.run(
        [*MAILFLEET_CMD, "hash-password", "--password-stdin"], input="s3cret-Pass\n", capture_output=True,
        text=True, check=True).stdout.strip()

    def start(limits: dict[str, Any]) -> Any:
        return mailfleet_factory({
            "roles": ["primary"], "smtp": {"workers": workers},
            "limits": {"exempt": [], "rate_window": "1h", **limits},
            "primary": {"domains": ["home.test"], "users": [
                {"address": "alice@home.test", "password_hash": password_hash},
                {"address": "bob@home.test", "password_hash": password_hash}]},
        }, services=("smtp", "submission"))

    return start


def login(server: Any, source: str, user: str) -> smtplib.SMTP:
    conn = smtplib.SMTP("127.0.0.1", server.ports["submission"], source_address=(source, 0), timeout=10)
    conn.login(user, "s3cret-Pass")
    return conn


def test_auth_attempts_are_limited(primary) -> None:
    server = primary({"client": {"auth_rate": 2}})
    client = Client(ATTACKER, server.ports["submission"])
    assert client.command("EHLO guesser.test").startswith("250")
    assert client.command("AUTH PLAIN AGFsaWNlQGhvbWUudGVzdAB3cm9uZw==")[:3] == "535"
    assert client.command("AUTH PLAIN AGFsaWNlQGhvbWUudGVzdAB3cm9uZzI=")[:3] == "535"
    assert client.command("AUTH PLAIN AGFsaWNlQGhvbWUudGVzdAB3cm9uZzM=") == (
        "421 4.7.0 Too many AUTH commands from your address 127.0.31.1 (limit 2 per 1h); try again later\r\n")
    assert client.closed()


def test_authenticated_users_count_per_login(primary) -> None:
    """alice's mail counts against her, wherever she sends from; bob, from alice's address, has his own."""
    server = primary({"client": {"message_rate": 1}, "authenticated": {"message_rate": 2}})
    alice = login(server, ATTACKER, "alice@home.test")
    for i in range(2):
        alice.sendmail("alice@home.test", ["bob@home.test"], f"Subject: {i}\r\n\r\nx\r\n".encode())
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        alice.sendmail("alice@home.test", ["bob@home.test"], b"Subject: 3\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 421
    assert b"user alice@home.test (limit 2 per 1h)" in refused.value.smtp_error
    alice.close()
    alice = login(server, OTHER, "alice@home.test")
    with pytest.raises(smtplib.SMTPSenderRefused):
        alice.sendmail("alice@home.test", ["bob@home.test"], b"Subject: 4\r\n\r\nx\r\n")
    alice.close()
    bob = login(server, ATTACKER, "bob@home.test")
    bob.sendmail("bob@home.test", ["alice@home.test"], b"Subject: from bob\r\n\r\nx\r\n")
    bob.quit()


def test_a_session_stays_counted_after_starttls(mailfleet_factory, smtp_sink, workers) -> None:
    """STARTTLS starts the SMTP session afresh (RFC 3207 §4.2) on the same connection: it still holds its
    place, or a client could slip out of the count with a TLS handshake."""
    server = mailfleet_factory(gateway(smtp_sink().port, workers, {"client": {"sessions": 2}}))
    upgraded = Client(ATTACKER, server.smtp_port)
    assert upgraded.command("EHLO tls.test").startswith("250")
    assert upgraded.command("STARTTLS").startswith("220")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    upgraded.file.close()
    upgraded.sock = context.wrap_socket(upgraded.sock)
    upgraded.file = upgraded.sock.makefile("rb")
    assert upgraded.command("EHLO tls.test").startswith("250")
    second = Client(ATTACKER, server.smtp_port)
    third = Client(ATTACKER, server.smtp_port)
    try:
        assert second.greeting.startswith("220 ")
        assert third.greeting.startswith("421 4.7.0 Too many sessions")
        assert upgraded.command("QUIT").startswith("221")
        upgraded.close()
        server.wait_for(lambda: greeted(ATTACKER, server.smtp_port),
                        what="the upgraded session's place to be free once it ended")
    finally:
        for client in (second, third):
            client.close()


def test_imap_and_pop3_sessions_are_limited_per_address(mailfleet_factory) -> None:
    server = mailfleet_factory({
        "roles": ["primary"], "smtp": {"workers": 0}, "limits": {"exempt": [], "mailbox_sessions": 3},
        "primary": {"domains": ["home.test"]}}, services=("smtp", "imap", "pop3"))
    imap, pop3 = server.ports["imap"], server.ports["pop3"]
    held = [Client(ATTACKER, imap), Client(ATTACKER, imap), Client(ATTACKER, pop3)]
    try:
        assert [c.greeting[:4] for c in held] == ["* OK", "* OK", "+OK "]
        over_imap, over_pop3 = Client(ATTACKER, imap), Client(ATTACKER, pop3)
        held += [over_imap, over_pop3]
        assert over_imap.greeting.startswith("* BYE Too many connections")
        assert over_pop3.greeting.startswith("-ERR [SYS/TEMP] Too many connections from your address")
        assert over_imap.closed() and over_pop3.closed()
        other = Client(OTHER, imap)
        held.append(other)
        assert other.greeting.startswith("* OK")
        held[0].command("a LOGOUT")
        server.wait_for(lambda: greeted_mailbox(ATTACKER, pop3), what="the IMAP session's place to be free")
    finally:
        for client in held:
            client.close()


def greeted_mailbox(source: str, port: int) -> bool:
    client = Client(source, port)
    client.close()
    return client.greeting.startswith("+OK")


def test_a_reload_changes_the_limits_and_keeps_the_sessions_counted(mailfleet_factory, smtp_sink, workers) -> None:
    server = mailfleet_factory(gateway(smtp_sink().port, workers, {"client": {"sessions": 5}}))
    held = [Client(ATTACKER, server.smtp_port) for _ in range(3)]
    try:
        assert [c.greeting[:3] for c in held] == ["220"] * 3
        config = dict(server.config)
        config["limits"] = {**config["limits"], "client": {"sessions": 3}}
        since = server.log_mark()
        server.reload(config)
        server.wait_for_log("config reloaded", since=since)
        over = Client(ATTACKER, server.smtp_port)
        held.append(over)
        assert over.greeting.startswith("421 4.7.0 Too many sessions from your address 127.0.31.1 (limit 3)")
    finally:
        for client in held:
            client.close()
