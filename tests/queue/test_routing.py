"""Routing end to end: MX delivery through a real BIND named, null MX, smarthost, and SIGHUP reload."""

from __future__ import annotations

import copy
import random
import smtplib
import socket

import pytest


def zones(net: str) -> dict[str, str]:
    return {
        # dest.test: the preferred MX is dead, the second one answers.
        "dest.test": f"@ IN MX 10 mx1\n@ IN MX 20 mx2\nmx1 IN A {net}.21\nmx2 IN A {net}.22\n",
        # home.test: where the senders live; bounces go there.
        "home.test": f"@ IN MX 10 mx\nmx IN A {net}.23\n",
        # nomail.test publishes a null MX (RFC 7505): mail to it bounces at once, with no attempt.
        "nomail.test": f"@ IN MX 0 .\n@ IN A {net}.24\n",
    }


def free_loopback_net() -> str:
    """A 127.x.y.0/24 of its own, where nothing holds port 25 on the MX addresses.

    Delivery by MX always goes to port 25, so the MX peers cannot take a free port as the other peers do;
    a loopback network picked at random keeps two runs on one machine (and a stray listener) apart.
    """
    for _ in range(50):
        net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
        try:
            for host in (21, 22, 23, 24):
                with socket.socket() as probe:
                    probe.bind((f"{net}.{host}", 25))
        except OSError:
            continue
        return net
    raise RuntimeError("no loopback network with port 25 free")


@pytest.fixture
def world(named_factory, smtp_sink):
    net = free_loopback_net()
    named = named_factory(zones(net))
    mx2 = smtp_sink(address=f"{net}.22", port=25)
    home = smtp_sink(address=f"{net}.23", port=25)
    return named, mx2, home


def gateway(named) -> dict:
    return {
        "roles": ["outgoing_gateway"],
        "dns": {"nameservers": [named.address], "port": named.port, "timeout": "2s"},
        "queue": {"retry_schedule": ["1s"]},
        "delivery": {"connect_timeout": "2s"},
        "outgoing_gateway": {"relay_networks": ["127.0.0.1/32"]},
    }


def test_outgoing_gateway_delivers_by_mx_preference_with_fallback(mailfleet_factory, world) -> None:
    named, mx2, home = world
    server = mailfleet_factory(gateway(named))
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.sendmail("alice@home.test", ["bob@dest.test", "carol@dest.test"], b"Subject: out\r\n\r\nhi\r\n")
    server.wait_for(lambda: len(mx2.messages) == 1, what="delivery to the second MX")
    # Both recipients of one domain travel in one transaction on one connection.
    assert sorted(mx2.messages[0].rcpt_tos) == ["bob@dest.test", "carol@dest.test"]
    assert b"Subject: out" in mx2.messages[0].data
    assert b"by mf.test.example (Mailfleet)" in mx2.messages[0].data
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")


def test_null_mx_bounces_at_once(mailfleet_factory, world) -> None:
    named, mx2, home = world
    server = mailfleet_factory(gateway(named))
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.sendmail("alice@home.test", ["x@nomail.test"], b"Subject: to a null MX\r\n\r\nhi\r\n")
    server.wait_for(lambda: len(home.messages) == 1, what="the bounce at the sender's MX")
    bounce = home.messages[0]
    assert bounce.mail_from == "<>" and bounce.rcpt_tos  # aiosmtpd shows the null reverse-path as "<>"
    assert bounce.rcpt_tos == ("alice@home.test",)
    assert b"Final-Recipient: rfc822; x@nomail.test" in bounce.data
    assert b"Status: 5.1.10" in bounce.data or b"Status: 5.7.27" in bounce.data or b"Status: 5.1.2" in bounce.data
    assert "attempt=1 status=failed" in server.log()


def test_primary_sends_remote_mail_through_its_smarthost(mailfleet_factory, smtp_sink, world) -> None:
    named, mx2, home = world
    smarthost = smtp_sink()
    server = mailfleet_factory({
        "roles": ["primary"],
        "dns": {"nameservers": [named.address], "port": named.port},
        "delivery": {"smarthost": f"127.0.0.1:{smarthost.port}"},
        "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
    })
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.ehlo("client.test")
        assert conn.docmd("MAIL", "FROM:<alice@home.test>")[0] == 250
        code, reply = conn.docmd("RCPT", "TO:<bob@dest.test>")
        assert code == 550 and b"5.7.1" in reply  # a primary is no relay on port 25
        conn.rset()
    # An alias may point outside: its remote copy leaves through the smarthost. Added by a SIGHUP reload.
    aliases = {"team@home.test": ["alice@home.test", "bob@dest.test"]}
    config = copy.deepcopy(server.config)
    config["primary"]["aliases"] = aliases
    server.reload(config)
    server.wait_for(lambda: "config reloaded" in server.log(), what="the reload")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.sendmail("someone@home.test", ["team@home.test"], b"Subject: team\r\n\r\nhi\r\n")
    server.wait_for(lambda: len(smarthost.messages) == 1, what="the remote copy at the smarthost")
    assert smarthost.messages[0].rcpt_tos == ("bob@dest.test",)
    assert mx2.messages == []  # never by MX when a smarthost is set
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, what="the local copy")


def test_sighup_with_a_broken_file_keeps_the_running_config(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink()
    config = {"roles": ["incoming_gateway"],
              "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{sink.port}"]}}}}
    server = mailfleet_factory(config)
    broken = copy.deepcopy(server.config)
    broken["roles"] = ["incoming_gateway", "nonsense_role"]
    conn = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)  # a session open across the reload
    conn.ehlo("client.test")
    server.reload(broken)
    server.wait_for(lambda: "reload refused" in server.log(), what="the refusal")
    assert "roles[1]: unknown role 'nonsense_role'" in server.log()
    conn.sendmail("s@outside.test", ["u@fwd.test"], b"Subject: still here\r\n\r\nx\r\n")
    conn.quit()
    server.wait_for(lambda: len(sink.messages) == 1, what="delivery with the old config")
