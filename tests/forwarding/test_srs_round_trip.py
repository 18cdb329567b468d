"""SRS with real peers: a running primary forwards through an alias to an outside MX (BIND serves the zones),
the copy leaves from an SRS0 address of the primary's domain that passes SPF (pyspf) where the original sender
would fail, the outside bounces it to that address, and the bounce reaches the original sender's MX. Forged and
expired SRS addresses are refused at RCPT TO; an incoming gateway in front of the primary verifies them too."""

from __future__ import annotations

import smtplib
import socket

import dns.resolver
import pytest
import spf

from appliance.forwarding.srs import DAY, SRS

NET = "127.0.43"
PRIMARY = f"{NET}.10"  # where the primary listens and sends from
SECRET = "srs-round-trip-secret-0123456789"


def _port_25_free(*hosts: str) -> bool:
    try:
        for host in hosts:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the sink binds: TIME_WAIT is fine
                probe.bind((host, 25))
    except OSError:
        return False
    return True


@pytest.fixture
def world(named_factory, smtp_sink):
    """BIND with the outside (carol's MX), the sender's domain (dave's MX, SPF of dave's own server) and the
    primary's domain (SPF of the primary); a sink on port 25 for each MX (delivery by MX goes to port 25)."""
    outside_mx, sender_mx = f"{NET}.21", f"{NET}.22"
    if not _port_25_free(outside_mx, sender_mx):
        pytest.fail(f"port 25 is taken on {outside_mx} or {sender_mx}: this range is srs's own")
    named = named_factory({
        "outside.test": f"@ IN MX 10 mx\nmx IN A {outside_mx}\n",
        "sender.test": f"@ IN MX 10 mx\nmx IN A {sender_mx}\n@ IN TXT \"v=spf1 ip4:{NET}.99 -all\"\n",
        "home.test": f"@ IN MX 10 mx\nmx IN A {PRIMARY}\n@ IN TXT \"v=spf1 ip4:{PRIMARY} -all\"\n",
    })  # named listens on interface addresses only: 127.0.0.1, a free port
    return named, smtp_sink(address=outside_mx, port=25), smtp_sink(address=sender_mx, port=25)


def primary_config(named) -> dict:
    return {
        "roles": ["primary"],
        "dns": {"nameservers": [named.address], "port": named.port, "timeout": "2s"},
        "delivery": {"source_addresses": [PRIMARY], "connect_timeout": "2s"},
        "queue": {"retry_schedule": ["1s"]},
        "primary": {"domains": ["home.test"], "users": [], "aliases": {"bob@home.test": ["carol@outside.test"]}},
        "srs": {"enabled": True, "secrets": [SECRET]},
    }


def spf_result(named, monkeypatch, ip: str, sender: str) -> str:
    resolver = dns.resolver.Resolver(configure=False)  # pyspf asks dnspython's default resolver
    resolver.nameservers, resolver.port = [named.address], named.port
    monkeypatch.setattr(dns.resolver, "default_resolver", resolver)
    return spf.check2(i=ip, s=sender, h="mf.test.example")[0]


def test_forwarded_copy_leaves_with_srs_and_its_bounce_comes_back(mailfleet_factory, world, monkeypatch) -> None:
    named, outside, sender = world
    primary = mailfleet_factory(primary_config(named), address=PRIMARY)
    with smtplib.SMTP(PRIMARY, primary.smtp_port, timeout=10) as conn:
        conn.sendmail("dave@sender.test", ["bob@home.test"], b"Subject: for bob\r\n\r\nhello\r\n")
    primary.wait_for(lambda: len(outside.messages) == 1, what="the forwarded copy at the outside MX")
    copy = outside.messages[0]
    assert copy.rcpt_tos == ("carol@outside.test",)
    assert copy.mail_from.startswith("SRS0=") and copy.mail_from.endswith("=sender.test=dave@home.test")
    assert copy.peer_address == PRIMARY
    # SPF at the destination: the SRS sender passes from the primary, where dave's own domain fails.
    assert spf_result(named, monkeypatch, copy.peer_address, copy.mail_from) == "pass"
    assert spf_result(named, monkeypatch, copy.peer_address, "dave@sender.test") == "fail"

    # The outside bounces it (RFC 3464, from <>) to the SRS address; the primary sends it on to dave.
    dsn = (b"From: MAILER-DAEMON@outside.test\r\nSubject: Undelivered Mail\r\n"
           b"Content-Type: text/plain\r\n\r\ncarol is gone\r\n")
    with smtplib.SMTP(PRIMARY, primary.smtp_port, timeout=10) as conn:
        conn.sendmail("<>", [copy.mail_from], dsn)
    primary.wait_for(lambda: len(sender.messages) == 1, what="the bounce at dave's MX")
    bounce = sender.messages[0]
    assert bounce.rcpt_tos == ("dave@sender.test",) and bounce.mail_from == "<>"
    assert b"carol is gone" in bounce.data
    refused_when_forged_or_expired(primary)


def refused_when_forged_or_expired(primary) -> None:
    """Forged and expired SRS addresses get 550 5.1.1 at RCPT TO (no backscatter); a valid one any sender.
    (Part of the test above: a second primary would double the test's time.)"""
    ours = SRS((SECRET,))
    good = ours.forward("dave@sender.test", "home.test")
    forged = SRS(("someone-elses-secret-0123456",)).forward("dave@sender.test", "home.test")
    expired = SRS((SECRET,), clock=lambda: ours.clock() - 30 * DAY).forward("dave@sender.test", "home.test")
    with smtplib.SMTP(PRIMARY, primary.smtp_port, timeout=10) as conn:
        conn.ehlo("outside.test")
        conn.mail("<>")
        code, reply = conn.rcpt(forged)
        assert code == 550 and b"5.1.1" in reply and b"hash does not match" in reply
        code, reply = conn.rcpt(expired)
        assert code == 550 and b"5.1.1" in reply and b"expired" in reply
        code, reply = conn.rcpt(good)
        assert code == 250
        # Any sender, not only <>: some MTAs bounce from a real address.
        conn.rset()
        conn.mail("postmaster@outside.test")
        assert conn.rcpt(good)[0] == 250


def test_an_incoming_gateway_in_front_verifies_srs_addresses_and_passes_them_on(mailfleet_factory, smtp_sink,
                                                                                world) -> None:
    primary = smtp_sink(address=f"{NET}.30")
    gateway = mailfleet_factory({
        "roles": ["incoming_gateway"],
        "queue": {"retry_schedule": ["1s"]},
        "incoming_gateway": {"domains": {"home.test": {"destinations": [f"{NET}.30:{primary.port}"],
                                                       "verify": "list", "recipients": ["bob@home.test"]}}},
        "srs": {"enabled": True, "secrets": [SECRET], "domain": "home.test"},
    }, address=f"{NET}.31", name="gw")
    good = SRS((SECRET,)).forward("dave@sender.test", "home.test")
    forged = SRS(("someone-elses-secret-0123456",)).forward("dave@sender.test", "home.test")
    with smtplib.SMTP(f"{NET}.31", gateway.smtp_port, timeout=10) as conn:
        conn.ehlo("outside.test")
        conn.mail("<>")
        code, reply = conn.rcpt(forged)
        assert code == 550 and b"hash does not match" in reply
        assert conn.rcpt(good)[0] == 250  # not in the verify list, but a valid SRS address
        conn.data(b"Subject: bounce\r\n\r\ngone\r\n")
    gateway.wait_for(lambda: len(primary.messages) == 1, what="the bounce at the primary")
    assert primary.messages[0].rcpt_tos == (good,)  # unchanged: the primary reverses it
