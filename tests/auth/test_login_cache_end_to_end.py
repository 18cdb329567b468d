"""The login cache as an administrator sees it: `mailfleet serve` in its own process, a user added with the CLI,
real clients (imaplib, poplib, smtplib AUTH) from 127.0.51.x. Each mailfleet process has its own cache (SMTP
acceptor processes theirs); the server here runs as one process, so the three protocols share one.

What is checked: a second login with the same password, over any of the three protocols, is served from the
cache (the log line says so); a wrong password never is; `mailfleet user passwd` makes the old password fail
at once, and so does a new `password_hash` in the config after SIGHUP; `mailfleet ban add` keeps a client
whose login is cached out, even in a session opened before it.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
import socket

import argon2
import pytest

ALICE = "alice@example.org"
PASSWORD = "login cache end to end"
SERVER = "127.0.51.1"
BOB = "bob@example.org"  # a config user (primary.users), with a cheap hash: the suite stays quick
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def primary(mailfleet_factory):
    # One process (no SMTP acceptor processes): the cache is per process, and here all three protocols share it.
    server = mailfleet_factory({"roles": ["primary"], "primary": {"domains": ["example.org"]}, "smtp": {"workers": 0}},
                               services=("imap", "pop3", "submission"), address=SERVER, name="logincache")
    added = server.cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    return server


class IMAPFrom(imaplib.IMAP4):
    """imaplib with its socket bound to a source address of our range (imaplib has no option for it)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


class POP3From(poplib.POP3):
    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


def imap_login(server, source: str, password: str, user: str = ALICE) -> bool:
    client = IMAPFrom(SERVER, server.ports["imap"], source)
    try:
        client.login(user, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        client.shutdown()
    return True


def pop3_login(server, source: str, password: str) -> bool:
    client = POP3From(SERVER, server.ports["pop3"], source)
    try:
        client.user(ALICE)
        client.pass_(password)
    except poplib.error_proto:
        return False
    finally:
        client.close()
    return True


def smtp_login(server, source: str, password: str) -> bool:
    with smtplib.SMTP(SERVER, server.ports["submission"], timeout=30, source_address=(source, 0)) as client:
        client.ehlo("client.test")
        token = base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {token}")[0] == 235


def cached_logins(log: str, source: str) -> int:
    return log.count(f"user {ALICE} authenticated from {source} (login cache:")


def test_imap_pop3_and_smtp_auth_share_the_cache_and_a_wrong_password_is_never_served(primary) -> None:
    source = "127.0.51.10"
    mark = primary.log_mark()
    assert imap_login(primary, source, PASSWORD)
    assert pop3_login(primary, source, PASSWORD)
    assert smtp_login(primary, source, PASSWORD)
    log = primary.wait_for_log(f"user {ALICE} authenticated from {source}", since=mark, count=3)
    assert cached_logins(log[mark:], source) == 2  # the first one paid for argon2, the other two did not
    assert not imap_login(primary, source, PASSWORD + "x")
    assert not pop3_login(primary, source, PASSWORD.upper())
    assert not smtp_login(primary, source, "")
    log = primary.wait_for_log(f"authentication failed for '{ALICE}' from {source}", since=mark, count=2)
    assert cached_logins(log[mark:], source) == 2
    assert PASSWORD not in log


def test_a_password_changed_with_the_cli_fails_at_once(primary) -> None:
    source = "127.0.51.20"
    assert imap_login(primary, source, PASSWORD) and imap_login(primary, source, PASSWORD)
    changed = primary.cli("user", "passwd", ALICE, "--password-stdin", input="the new one\n")
    assert changed.returncode == 0, changed.stderr
    assert not imap_login(primary, source, PASSWORD)
    assert not pop3_login(primary, source, PASSWORD)
    assert pop3_login(primary, source, "the new one")


def test_a_ban_keeps_a_client_with_a_cached_login_out(primary) -> None:
    source = "127.0.51.30"
    assert imap_login(primary, source, PASSWORD)
    early = IMAPFrom(SERVER, primary.ports["imap"], source)  # connected before the ban: past the connect check
    try:
        banned = primary.cli("ban", "add", source)
        assert banned.returncode == 0, banned.stderr
        with pytest.raises(imaplib.IMAP4.error):
            early.login(ALICE, PASSWORD)
    finally:
        early.shutdown()
    assert smtp_login(primary, "127.0.51.31", PASSWORD)  # another client still gets in


def test_a_config_password_hash_changed_by_a_reload_fails_at_once(primary) -> None:
    source = "127.0.51.40"
    config = dict(primary.config)
    config["primary"] = {**config["primary"], "users": [{"address": BOB, "password_hash": CHEAP.hash("first")}]}
    mark = primary.log_mark()
    primary.reload(config)
    primary.wait_for_log("config reloaded", since=mark)
    assert imap_login(primary, source, "first", BOB) and imap_login(primary, source, "first", BOB)
    assert primary.log()[mark:].count(f"user {BOB} authenticated from {source} (login cache:") == 1
    config["primary"] = {**config["primary"], "users": [{"address": BOB, "password_hash": CHEAP.hash("second")}]}
    mark = primary.log_mark()
    primary.reload(config)
    log = primary.wait_for_log("config reloaded", since=mark)
    assert "login cache: 1 login(s) dropped, their users' passwords changed with the config" in log[mark:]
    assert not imap_login(primary, source, "first", BOB)
    assert imap_login(primary, source, "second", BOB)
