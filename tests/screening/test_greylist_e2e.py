"""Greylisting as a mail administrator meets it: a running Mailfleet (tests/peers/mailfleet.py) with greylisting
on and a one-second delay, real SMTP clients from several 127.0.34.x addresses (and 127.0.134.x for another
/24), the mail read back from the mailbox.

The delay is short and the tests retry with wait_until until the retry passes: no sleep stands for the delay,
and no assertion is about how long anything took.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from peers.mailfleet import RunningMailfleet
from waits import wait_until

PASSWORD = "s3cret-Pass"
ALICE = "alice@home.test"
SENDER = "news@far.example"
OTHER_NETWORK = "127.0.134.10"  # another /24 than the 127.0.34.0/24 the clients send from
RELAY_CLIENT = "127.0.34.130"  # inside relay_networks


@pytest.fixture(scope="module")
def password_hash() -> str:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "hash-password", "--password-stdin"],
                          input=PASSWORD + "\n", capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


@pytest.fixture
def host(mailfleet_factory, password_hash) -> Callable[..., RunningMailfleet]:
    def start(name: str = "mf", run: bool = True, **greylisting: Any) -> RunningMailfleet:
        return mailfleet_factory({
            "roles": ["primary", "outgoing_gateway"],
            "primary": {"domains": ["home.test"], "users": [{"address": ALICE, "password_hash": password_hash}]},
            "outgoing_gateway": {"relay_networks": ["127.0.34.128/26"]},
            "greylisting": {"enabled": True, "delay": "1s", "auto_allow": 0, **greylisting},
        }, services=("smtp", "submission"), name=name, run=run)

    return start


class Client:
    """One SMTP session from `source`; each attempt is RSET, MAIL, RCPT on it."""

    def __init__(self, server: RunningMailfleet, source: str, service: str = "smtp") -> None:
        self.conn = smtplib.SMTP("127.0.0.1", server.ports[service], timeout=30, source_address=(source, 0))
        self.conn.ehlo("client.test")

    def attempt(self, sender: str = SENDER, rcpt: str = ALICE) -> tuple[int, str]:
        self.conn.rset()
        code, reply = self.conn.docmd("MAIL", f"FROM:<{sender}>")
        assert code == 250, reply
        code, reply = self.conn.docmd("RCPT", f"TO:<{rcpt}>")
        return code, reply.decode()

    def passes(self, sender: str = SENDER, rcpt: str = ALICE) -> None:
        """Retry until the delay is over and the RCPT is accepted."""
        wait_until(lambda: self.attempt(sender, rcpt)[0] == 250, 20, f"RCPT <{rcpt}> from <{sender}> to pass")

    def data(self, subject: str) -> tuple[int, str]:
        code, reply = self.conn.data(f"Subject: {subject}\r\nMessage-ID: <{subject}@far.example>\r\n\r\nhi\r\n")
        return code, reply.decode()

    def close(self) -> None:
        self.conn.quit()


def _delivered(server: RunningMailfleet, subject: str) -> bool:
    return any(f"Subject: {subject}".encode() in path.read_bytes() for path in server.mailbox_files(ALICE))


def test_a_first_attempt_is_451_and_the_retry_after_the_delay_is_delivered(host) -> None:
    server = host()
    client = Client(server, "127.0.34.10")
    code, reply = client.attempt()
    assert code == 451 and reply.startswith("4.7.1 ") and "Greylisted" in reply and "try again in 1 second" in reply
    client.passes()
    assert client.data("after-greylisting")[0] == 250
    server.wait_for(lambda: _delivered(server, "after-greylisting"), what="the greylisted mail in the mailbox")
    client.close()
    assert "greylisted (new), retry in 1 second" in server.log()


def test_another_address_of_the_24_shares_the_triplet_another_24_does_not(host) -> None:
    server = host()
    first = Client(server, "127.0.34.10")
    assert first.attempt()[0] == 451
    first.passes()
    neighbour = Client(server, "127.0.34.99")
    assert neighbour.attempt()[0] == 250
    assert neighbour.data("from-the-neighbour")[0] == 250
    stranger = Client(server, OTHER_NETWORK)
    assert stranger.attempt()[0] == 451
    assert neighbour.attempt("someone-else@far.example")[0] == 451  # another sender: another triplet
    for client in (first, neighbour, stranger):
        client.close()
    server.wait_for(lambda: _delivered(server, "from-the-neighbour"), what="the neighbour's mail in the mailbox")


def test_a_network_is_auto_allowed_after_its_triplets_passed(host) -> None:
    server = host(auto_allow=2, auto_allow_interval="0s")
    client = Client(server, "127.0.34.40")
    for sender in ("a@far.example", "b@far.example"):
        assert client.attempt(sender)[0] == 451
        client.passes(sender)
    server.wait_for_log("network 127.0.34.0/24 auto-allowed after 2 passed triplets")
    other = Client(server, "127.0.34.41")
    assert other.attempt("never-seen@far.example")[0] == 250
    assert other.data("auto-allowed")[0] == 250
    assert Client(server, OTHER_NETWORK).attempt("never-seen@far.example")[0] == 451
    server.wait_for(lambda: _delivered(server, "auto-allowed"), what="the auto-allowed network's mail")


def test_the_state_survives_a_kill_and_restart(host) -> None:
    server = host()
    client = Client(server, "127.0.34.50")
    assert client.attempt()[0] == 451
    client.passes()
    client.close()
    server.kill()  # SIGKILL: no clean shutdown of the database
    server.start()
    again = Client(server, "127.0.34.51")
    assert again.attempt()[0] == 250  # the passed triplet is remembered
    assert again.attempt("new@far.example")[0] == 451  # and greylisting is still on
    again.close()


def test_relay_networks_and_authenticated_users_are_not_greylisted(host) -> None:
    server = host()
    relay = Client(server, RELAY_CLIENT)
    assert relay.attempt()[0] == 250
    assert relay.data("from-the-relay-network")[0] == 250
    submission = Client(server, "127.0.34.11", "submission")
    submission.conn.login(ALICE, PASSWORD)
    assert submission.attempt(ALICE, ALICE)[0] == 250
    assert Client(server, "127.0.34.12").attempt(ALICE, ALICE)[0] == 451  # the same triplet, unauthenticated
    server.wait_for(lambda: _delivered(server, "from-the-relay-network"), what="the relay client's mail")


def test_the_null_sender_is_greylisted_after_data(host) -> None:
    server = host()
    client = Client(server, "127.0.34.60")
    assert client.attempt("")[0] == 250  # a remote site's address verification probe gets the truth
    code, reply = client.data("bounce")
    assert code == 451 and reply.startswith("4.7.1 Greylisted")

    def retried() -> bool:
        assert client.attempt("")[0] == 250
        return client.data("bounce")[0] == 250

    wait_until(retried, 20, "the bounce to pass after the delay")
    server.wait_for(lambda: _delivered(server, "bounce"), what="the bounce in the mailbox")
    client.close()


def test_a_corrupt_state_file_is_451_4_3_0_and_one_log_line(host) -> None:
    server = host(run=False)
    server.data_dir.mkdir(parents=True)
    (server.data_dir / "greylist.sqlite").write_bytes(b"not a database\n" * 500)
    server.start()
    client = Client(server, "127.0.34.70")
    code, reply = client.attempt()
    assert (code, reply) == (451, "4.3.0 Greylisting state unavailable; try again later")
    client.close()
    log = server.wait_for_log("greylist: state unavailable")
    assert "file is not a database" in log and "Traceback" not in log
