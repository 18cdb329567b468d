"""The screening as a mail administrator meets it: a running Mailfleet with two acceptor processes, a real
rbldnsd serving the block and allow lists, and real SMTP clients from several 127.0.33.x addresses."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

pytest_plugins = ["peers.rbldnsd"]  # the `rbldnsd_factory` fixture

BL, BL2, WL = "bl.screen.test", "bl2.screen.test", "wl.screen.test"
LISTED, CLEAN, REFUSING, OTHER_CODE, ALLOWED, LATER, HIJACKED = (
    "127.0.33.2", "127.0.33.3", "127.0.33.4", "127.0.33.5", "127.0.33.6", "127.0.33.7", "127.0.33.8")
TALKER, POLITE, ALLOWED_TALKER, LISTED_POLITE, FLOODER = (
    "127.0.33.20", "127.0.33.21", "127.0.33.22", "127.0.33.23", "127.0.33.24")
MESSAGE = b"From: friend@far.test\r\nSubject: hello\r\n\r\nHello.\r\n"
SITES = [{"zone": BL, "weight": 2, "codes": ["127.0.0.2-127.0.0.3"]},
         {"zone": BL2, "weight": 1},
         {"zone": WL, "weight": -2}]


def _zones() -> dict[str, dict[str, str]]:
    return {BL: {LISTED: "127.0.0.2", OTHER_CODE: "127.0.0.9", LISTED_POLITE: "127.0.0.3"},
            BL2: {REFUSING: "127.255.255.254", HIJACKED: "10.1.2.3"},
            WL: {ALLOWED: "127.0.0.2", ALLOWED_TALKER: "127.0.0.2"}}


def _gateway(mailfleet_factory, rbl, screening: dict, services: tuple[str, ...] = ("smtp",)):
    return mailfleet_factory({
        "roles": ["primary"],
        "smtp": {"workers": 2},  # two acceptors: the caches are shared between them
        "dns": {"nameservers": [rbl.address], "port": rbl.port},
        "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
        "screening": screening,
    }, services=services)


def _send(server, source: str) -> None:
    """A whole transaction with smtplib from `source`; raises smtplib's error on a refusal."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30, source_address=(source, 0)) as conn:
        conn.sendmail("friend@far.test", ["alice@home.test"], MESSAGE)


def _refused_at_connect(server, source: str) -> tuple[int, bytes]:
    with pytest.raises(smtplib.SMTPConnectError) as caught:
        smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30, source_address=(source, 0))
    return caught.value.smtp_code, caught.value.smtp_error


def _delivered(server, count: int) -> None:
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) >= count, what=f"{count} message(s)")


class _Raw:
    """A client that does as it pleases: it may talk before the greeting ends."""

    def __init__(self, port: int, source: str, first: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        if first:
            self.sock.sendall(first)  # at once: before the server's greeting has ended
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        line = self.file.readline()
        assert line, "the server closed the connection"
        return line

    def reply(self) -> list[bytes]:
        """The lines of one reply (up to the one with a space after the code)."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def send(self, text: bytes) -> list[bytes]:
        self.sock.sendall(text)
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _talk_first(port: int, source: str) -> tuple[bytes, bytes]:
    """A client that sends EHLO before the greeting ends: (the greeting's first line, the answer to EHLO)."""
    client = _Raw(port, source, first=b"EHLO bot.test\r\n")
    try:
        return client.reply()[0], client.reply()[0]
    finally:
        client.close()


def test_dnsbl_listed_client_is_refused_a_clean_one_accepted_and_errors_fail_open(
        mailfleet_factory, rbldnsd_factory) -> None:
    rbl = rbldnsd_factory(_zones())
    server = _gateway(mailfleet_factory, rbl, {"dnsbl": {"sites": SITES, "threshold": 2, "ttl": "0s"}})

    code, text = _refused_at_connect(server, LISTED)  # instead of the greeting: no 220- was sent
    assert code == 554 and b"5.7.1" in text and BL.encode() in text and LISTED.encode() in text

    _send(server, CLEAN)
    _send(server, OTHER_CODE)  # listed in BL, but with a code the site does not count
    mark = server.log_mark()
    _send(server, REFUSING)  # 127.255.255.254 from BL2 ("query refused") is an error, never a listing
    _delivered(server, 3)
    log = server.wait_for_log("127.255.255.254", since=mark)
    assert "dns.nameservers" in log[mark:]  # the log says what to fix: the host's own resolver
    _send(server, HIJACKED)  # an answer outside 127.0.0.0/8 (a resolver rewriting NXDOMAIN) is no listing
    _delivered(server, 4)
    assert "rewrites NXDOMAIN" in server.wait_for_log("10.1.2.3", since=mark)

    # List the clean client, then delist it: rbldnsd reloads the edited file, the next connection sees it.
    rbl.write(BL, {**_zones()[BL], LATER: "127.0.0.2"})
    code, text = _refused_at_connect(server, LATER)
    assert code == 554 and BL.encode() in text
    rbl.delist(BL, LATER, _zones()[BL])
    _send(server, LATER)
    _delivered(server, 5)

    # SIGHUP turns the pregreet test on in both acceptors; a talker is refused from then on.
    config = dict(server.config)
    config["screening"] = {**config["screening"], "pregreet": {"enabled": True, "wait": "1s"}}
    server.reload(config)
    server.wait_for(lambda: "(2 of 2 SMTP workers)" in server.log(), what="both acceptors to reload")
    for _ in range(2):  # new connections land on either acceptor
        greeting, answer = _talk_first(server.smtp_port, CLEAN)
        assert greeting.startswith(b"220-") and answer.startswith(b"554 5.7.1")
    assert "Traceback" not in server.log()


def test_dnswl_listed_client_skips_the_pregreet_test(mailfleet_factory, rbldnsd_factory) -> None:
    rbl = rbldnsd_factory(_zones())
    server = _gateway(mailfleet_factory, rbl, {"pregreet": {"enabled": True, "wait": "1s"},
                                               "dnsbl": {"sites": SITES, "threshold": 2}})
    # The allow-listed client talks at once and is served all the same (postscreen_dnsbl_allowlist_threshold).
    client = _Raw(server.smtp_port, ALLOWED_TALKER, first=b"EHLO early.test\r\n")
    try:
        greeting = client.reply()
        assert greeting[-1].startswith(b"220 ")
        assert client.reply()[0].startswith(b"250")  # the EHLO it sent early
        assert client.send(b"MAIL FROM:<friend@far.test>\r\n")[0].startswith(b"250")
    finally:
        client.close()


def test_a_dead_dns_server_fails_open(mailfleet_factory, tmp_path: Path) -> None:
    # A nameserver that takes the queries and never answers: every lookup times out.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        server = mailfleet_factory({
            "roles": ["primary"],
            "dns": {"nameservers": ["127.0.0.1"], "port": silent.getsockname()[1]},
            "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
            "screening": {"dnsbl": {"sites": SITES, "timeout": "1s"}},
        })
        mark = server.log_mark()
        _send(server, LISTED)
        _delivered(server, 1)
        log = server.wait_for_log("fail open", since=mark)
        assert BL in log[mark:]
    finally:
        silent.close()


def test_a_pregreet_talker_is_refused_and_a_polite_client_passes_once(mailfleet_factory, rbldnsd_factory) -> None:
    rbl = rbldnsd_factory(_zones())
    server = _gateway(mailfleet_factory, rbl, {"pregreet": {"enabled": True, "wait": "1s"},
                                               "dnsbl": {"sites": SITES, "threshold": 2}},
                      services=("smtp", "submission"))

    talker = _Raw(server.smtp_port, TALKER, first=b"EHLO bot.test\r\nMAIL FROM:<bot@far.test>\r\n")
    try:
        greeting = talker.reply()
        assert greeting[0].startswith(b"220-") and greeting[-1].startswith(b"220 ")  # RFC 5321 §4.2.1
        for _ in range(2):  # the EHLO and MAIL it sent too early
            [refusal] = talker.reply()
            assert refusal.startswith(b"554 5.7.1") and b"before the greeting" in refusal
        [refusal] = talker.send(b"RCPT TO:<alice@home.test>\r\n")
        assert refusal.startswith(b"554 5.7.1")
        assert talker.send(b"QUIT\r\n")[0].startswith(b"221")
    finally:
        talker.close()
    assert "PREGREET" in server.wait_for_log(f"client={TALKER} PREGREET")

    # A bot that keeps going is refused 20 commands (postscreen_command_count_limit), then hung up on.
    flood = _Raw(server.smtp_port, FLOODER, first=b"NOOP\r\n" * 25)
    try:
        assert flood.reply()[-1].startswith(b"220 ")
        replies = [flood.reply()[0][:3] for _ in range(21)]
        assert replies == [b"554"] * 20 + [b"421"]
        assert flood.file.readline() == b""  # closed by the server
    finally:
        flood.close()

    _send(server, POLITE)  # smtplib waits for the last line of the greeting
    _delivered(server, 1)
    for restart in (False, True):
        if restart:
            server.restart()  # the pass is on disk, not in a process
        polite = _Raw(server.smtp_port, POLITE)
        try:
            assert polite.reply()[0].startswith(b"220 ")  # a cached pass: one line at once
        finally:
            polite.close()

    # Listed and polite: the 220- was sent before the answer came, so the refusal follows the greeting.
    listed = _Raw(server.smtp_port, LISTED_POLITE)
    try:
        assert listed.reply()[0].startswith(b"220-")
        [refusal] = listed.send(b"EHLO polite.test\r\n")
        assert refusal.startswith(b"554 5.7.1") and BL.encode() in refusal
    finally:
        listed.close()

    # Submission is never screened: a client that talks first there is served as usual.
    greeting, answer = _talk_first(server.ports["submission"], TALKER)
    assert greeting.startswith(b"220 ") and answer.startswith(b"250")
    assert "Traceback" not in server.log()
