"""A dictionary attack on a running appliance's MX port, from 127.0.32.x with smtplib: the unknown recipients
get 550 5.1.1, then ever slower replies (the delays the server logs), then 421 4.7.0 and a ban that every
listener honours, that `mailfleet ban list` shows with its evidence, and that a restart keeps. A client in the
tarpit holds up no one else.
"""

from __future__ import annotations

import contextlib
import json
import re
import smtplib
import socket
import threading

import pytest

ATTACKER = "127.0.32.20"
NEIGHBOUR = "127.0.32.21"
CONFIG = {"roles": ["primary"], "primary": {"domains": ["example.org"], "users": [{"address": "alice@example.org"}]}}


def mx(server, source: str) -> smtplib.SMTP:
    conn = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=60, source_address=(source, 0))
    conn.ehlo("client.test")
    assert conn.docmd("MAIL", "FROM:<someone@outside.test>")[0] == 250
    return conn


def greeting(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        return sock.recv(4096)


def test_unknown_recipients_are_tarpitted_then_banned_everywhere(mailfleet_factory) -> None:
    server = mailfleet_factory({**CONFIG, "bans": {"dictionary": {
        "session_threshold": 2, "ip_threshold": 50, "ban_after": 5, "tarpit_delay": "0.05s", "tarpit_max": "0.2s"}}},
        services=("smtp", "imap"))
    conn = mx(server, ATTACKER)
    replies = [conn.docmd("RCPT", f"TO:<{local}@example.org>") for local in
               ("adam", "bert", "alice", "carl", "dave", "eric")]
    codes = [(code, text.split(b" ", 1)[0]) for code, text in replies]
    assert codes == [(550, b"5.1.1"), (550, b"5.1.1"), (250, b"2.1.5"), (550, b"5.1.1"), (550, b"5.1.1"),
                     (421, b"4.7.0")]
    assert b"127.0.32.20 is banned until " in replies[5][1] and b"(dictionary attack)" in replies[5][1]
    with pytest.raises(smtplib.SMTPServerDisconnected):  # a 421 ends the session (RFC 5321 §3.8)
        conn.docmd("RCPT", "TO:<alice@example.org>")
    conn.close()
    # the delays the server waited, in order: 0.05s from the third RCPT on, doubled per unknown one; the reply
    # that bans is not delayed
    log = server.log()
    assert re.findall(r"client=127\.0\.32\.20 tarpit: ([\d.]+)s before the RCPT reply", log) == [
        "0.05", "0.05", "0.1"]
    assert "banning 127.0.32.20 for 3600s: dictionary attack, 5 unknown recipients within 10m" in log

    assert greeting(server.smtp_port, ATTACKER).startswith(b"421 4.7.0 127.0.32.20 is banned")
    assert greeting(server.ports["imap"], ATTACKER).startswith(b"* BYE")
    assert greeting(server.smtp_port, NEIGHBOUR).startswith(b"220 ")  # the neighbour is not punished
    [ban] = json.loads(server.cli("ban", "list", "--json").stdout)
    assert (ban["address"], ban["reason"], ban["offence"]) == (ATTACKER, "dictionary attack", 1)
    assert "<eric@example.org>" in ban["evidence"] and "<adam@example.org>" not in ban["evidence"]

    server.restart()
    assert greeting(server.smtp_port, ATTACKER).startswith(b"421 4.7.0")


def test_a_client_in_the_tarpit_holds_up_no_one_else(mailfleet_factory) -> None:
    server = mailfleet_factory({**CONFIG, "bans": {"dictionary": {
        "session_threshold": 1, "tarpit_delay": "4m", "tarpit_max": "4m"}}})
    slow = mx(server, ATTACKER)
    assert slow.docmd("RCPT", "TO:<nobody@example.org>")[0] == 550
    since = server.log_mark()
    answers: list[tuple[int, bytes]] = []

    def tarpitted() -> None:
        with contextlib.suppress(OSError, smtplib.SMTPException):  # the test hangs up before the answer
            answers.append(slow.docmd("RCPT", "TO:<x@example.org>"))

    waiting = threading.Thread(target=tarpitted, daemon=True)
    waiting.start()
    server.wait_for_log("client=127.0.32.20 tarpit: 240s before the RCPT reply", since=since)
    # while that reply is four minutes away, another client's whole transaction goes through
    other = mx(server, NEIGHBOUR)
    assert other.docmd("RCPT", "TO:<alice@example.org>")[0] == 250
    code, reply = other.data(b"Subject: meanwhile\r\n\r\nhello\r\n")
    assert code == 250, reply
    other.quit()
    server.wait_for(lambda: server.mailbox_files("alice@example.org"), what="the message in alice's INBOX")
    assert answers == [] and waiting.is_alive()  # the tarpitted RCPT is still unanswered
    slow.sock.close()
