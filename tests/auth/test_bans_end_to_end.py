"""Issue 15's parallel-login attack against a running appliance, with real clients from 127.0.32.x: many TLS
sessions from one address send their passwords at once (SMTP AUTH PLAIN on submission after STARTTLS, IMAP
LOGIN over implicit TLS with imapclient), the right password last.

What an administrator checks: the log shows exactly ``auth.ban_threshold`` passwords checked, the rest refused
unchecked; the right password, sent from a session that connected before the ban, does not get in; the address
is then refused at connect on every listener (421 4.7.0 on 25, 587 and 465, BYE on IMAP), also after a
restart; a good user from another address still logs in.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import argon2
import imapclient
import pytest
from imapclient import tls as imap_tls

PASSWORD = "correct horse battery staple"
ALICE = "alice@example.org"
ATTACKER = "127.0.32.5"
IMAP_ATTACKER = "127.0.32.6"
GOOD = "127.0.32.200"
SESSIONS = 24  # threshold 10: well past it


@pytest.fixture(scope="module")
def password_hash() -> str:
    return argon2.PasswordHasher().hash(PASSWORD)


@pytest.fixture
def primary(mailfleet_factory, password_hash):
    return mailfleet_factory({
        "roles": ["primary"],
        "primary": {"domains": ["example.org"], "users": [{"address": ALICE, "password_hash": password_hash}]},
        "tls": {"plaintext_auth_on_loopback": False},
        "auth": {"ban_threshold": 10, "ban_window": "10m", "ban_duration": "1h"},
    }, services=("smtp", "submission", "submissions", "imaps"))


def client_context(server) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "selfsigned.crt"))
    context.check_hostname = False  # the clients connect to 127.0.0.1; the chain is still verified
    return context


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def submission(server, source: str) -> smtplib.SMTP:
    """A session on 587 from `source`, past the greeting, STARTTLS and EHLO: ready to send AUTH."""
    conn = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=60, source_address=(source, 0))
    conn.ehlo("client.test")
    conn.starttls(context=client_context(server))
    conn.ehlo("client.test")
    return conn


def imap_from(server, source: str) -> imapclient.IMAPClient:
    """imapclient over implicit TLS with its socket bound to `source` (imapclient has no option for it)."""

    class FromSource(imap_tls.IMAP4_TLS):
        def _create_socket(self, timeout: float | None = None) -> socket.socket:
            sock = socket.create_connection((self.host, self.port), timeout=timeout or 60,
                                            source_address=(source, 0))
            return imap_tls.wrap_socket(sock, self.ssl_context, self.host)

    class Client(imapclient.IMAPClient):
        def _create_IMAP4(self):  # noqa: N802 - imapclient's name
            return FromSource(self.host, self.port, self.ssl_context, 60)

    return Client("127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_context(server),
                  timeout=60)


def checked_and_refused(log: str, source: str) -> tuple[int, int]:
    lines = [line for line in log.splitlines() if f"from {source}" in line]
    return (sum("authentication failed for" in line for line in lines),
            sum("refused unchecked" in line for line in lines))


def connect_reply(port: int, source: str, context: ssl.SSLContext | None = None) -> bytes:
    """What a new connection from `source` reads first (the greeting or the refusal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as raw:
        sock = context.wrap_socket(raw) if context is not None else raw
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_parallel_smtp_auth_gets_the_threshold_checked_and_the_right_password_last_fails(primary) -> None:
    sessions = [submission(primary, ATTACKER) for _ in range(SESSIONS)]
    last = sessions.pop()  # past connect, STARTTLS and EHLO before any guess: the ban check at connect is behind it
    start = threading.Barrier(len(sessions))

    def guess(pair: tuple[int, smtplib.SMTP]) -> int:
        n, conn = pair
        start.wait(30)
        return conn.docmd("AUTH", f"PLAIN {plain(ALICE, f'guess-{n}')}")[0]

    with ThreadPoolExecutor(len(sessions)) as pool:
        codes = list(pool.map(guess, enumerate(sessions)))
    assert set(codes) <= {535, 454}, codes
    code, reply = last.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")
    assert code in (535, 454), (code, reply)  # the right password, once the threshold is reached: refused
    for conn in [*sessions, last]:
        conn.close()

    primary.wait_for_log("banning 127.0.32.5 for 3600s after 10 authentication failures")
    checked, refused = checked_and_refused(primary.log(), ATTACKER)
    assert checked == 10, primary.log()[-3000:]
    # the others: refused unchecked by the authenticator, or (once the ban is there) 454 before AUTH starts
    assert refused + [*codes, code].count(454) == SESSIONS - 10
    for name in ("smtp", "submission"):
        assert connect_reply(primary.ports[name], ATTACKER).startswith(b"421 4.7.0 127.0.32.5 is banned until ")
    assert connect_reply(primary.ports["submissions"], ATTACKER, client_context(primary)).startswith(b"421 4.7.0")
    assert b"(login failures)" in connect_reply(primary.ports["smtp"], ATTACKER)

    with submission(primary, GOOD) as good:  # another address still logs in
        assert good.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")[0] == 235

    primary.restart()  # the ban is on disk
    assert connect_reply(primary.ports["smtp"], ATTACKER).startswith(b"421 4.7.0")
    assert connect_reply(primary.ports["smtp"], GOOD).startswith(b"220 ")


def test_parallel_imap_logins_get_the_threshold_checked_and_the_right_password_last_fails(primary) -> None:
    clients = [imap_from(primary, IMAP_ATTACKER) for _ in range(SESSIONS)]
    last = clients.pop()
    start = threading.Barrier(len(clients))

    def guess(pair: tuple[int, imapclient.IMAPClient]) -> str:
        n, client = pair
        start.wait(30)
        try:
            client.login(ALICE, f"guess-{n}")
        except imapclient.exceptions.LoginError as exc:
            return str(exc)
        return "logged in"

    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(guess, enumerate(clients)))
    assert all("AUTHENTICATIONFAILED" in answer for answer in answers), answers
    with pytest.raises(imapclient.exceptions.LoginError):
        last.login(ALICE, PASSWORD)

    primary.wait_for_log("banning 127.0.32.6 for 3600s after 10 authentication failures")
    assert checked_and_refused(primary.log(), IMAP_ATTACKER) == (10, SESSIONS - 10)
    with pytest.raises(imapclient.exceptions.IMAPClientError):  # BYE at the greeting now
        imap_from(primary, IMAP_ATTACKER)
    good = imap_from(primary, GOOD)
    good.login(ALICE, PASSWORD)
    good.logout()

