"""`mailfleet ban list|add|del` as an administrator uses them, against a running Mailfleet: a ban added refuses
the address's next connection on every listener at once, `del` lets it in again, no restart or signal between;
bad addresses and durations are one-line errors."""

from __future__ import annotations

import json
import socket

import pytest

from .command import assert_one_line_error, assert_usage_error, mailfleet

CONFIG = {"roles": ["primary"], "primary": {"domains": ["example.org"]},
          "bans": {"exempt": ["127.0.32.128/25"]}}


def first_line(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        return sock.recv(4096)


@pytest.fixture
def server(mailfleet_factory):
    return mailfleet_factory(CONFIG, services=("smtp", "pop3", "imap"))


def test_add_list_and_del_while_the_service_runs(server) -> None:
    assert server.cli("ban", "list").stdout == "no bans in force\n"
    added = server.cli("ban", "add", "127.0.32.50", "--for", "2h", "--reason", "spam   run")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("banned 127.0.32.50 for 2h, until ") and added.stdout.endswith(": spam run\n")
    network = server.cli("ban", "add", "127.0.32.64/28")
    assert network.stdout == "banned 127.0.32.64/28 until lifted: banned by the administrator\n"

    for port in server.ports.values():  # SMTP, POP3 and IMAP refuse at once
        assert first_line(port, "127.0.32.50")[:5] in (b"421 4", b"-ERR ", b"* BYE")
    assert first_line(server.smtp_port, "127.0.32.50").startswith(b"421 4.7.0 127.0.32.50 is banned until ")
    assert b"(spam run)" in first_line(server.smtp_port, "127.0.32.50")
    assert first_line(server.smtp_port, "127.0.32.70").startswith(b"421 4.7.0")  # inside the /28
    assert first_line(server.smtp_port, "127.0.32.80").startswith(b"220 ")

    listing = server.cli("ban", "list")
    assert listing.stdout.splitlines()[0].startswith("127.0.32.50  ")
    assert listing.stdout.splitlines()[0].endswith("  spam run  (by hand)")
    assert listing.stdout.splitlines()[2].startswith("127.0.32.64/28  until lifted  banned by the administrator")
    assert listing.stdout.splitlines()[-1] == "-- 2 ban(s)"
    rows = json.loads(server.cli("ban", "list", "--json").stdout)
    assert [(r["address"], r["reason"], r["source"], r["until"] is None) for r in rows] == [
        ("127.0.32.50", "spam run", "admin", False), ("127.0.32.64/28", "banned by the administrator", "admin", True)]

    inside = server.cli("ban", "del", "127.0.32.70")
    assert_one_line_error(inside, 1, "127.0.32.70 has no ban of its own", "127.0.32.64/28")
    lifted = server.cli("ban", "del", "127.0.32.50")
    assert lifted.stdout == "lifted the ban of 127.0.32.50 (spam run)\n"
    assert first_line(server.smtp_port, "127.0.32.50").startswith(b"220 ")
    assert_one_line_error(server.cli("ban", "del", "127.0.32.50"), 1, "127.0.32.50 is not banned")


def test_bad_addresses_durations_and_exempt_addresses_are_one_line_errors(server) -> None:
    config = server.config_path
    assert_one_line_error(mailfleet("ban", "add", "127.0.32.1/24", config=config), 1,
                          "has host bits set", "127.0.32.0/24")
    assert_one_line_error(mailfleet("ban", "add", "mail.example.org", config=config), 1,
                          "'mail.example.org' is not an IP address or network")
    assert_one_line_error(mailfleet("ban", "add", "127.0.32.9", "--for", "5 fortnights", config=config), 2,
                          "--for", "expected a duration")
    assert_one_line_error(mailfleet("ban", "add", "127.0.32.9", "--reason", "  ", config=config), 1, "--reason")
    assert_one_line_error(mailfleet("ban", "add", "127.0.32.200", config=config), 1,
                          "127.0.32.200 is exempt from bans")
    assert_one_line_error(mailfleet("ban", "del", "::1/200", config=config), 1, "is not an IP address or network")
    assert_usage_error(mailfleet("ban", "add", config=config), "ADDRESS")
    assert json.loads(mailfleet("ban", "list", "--json", config=config).stdout) == []
