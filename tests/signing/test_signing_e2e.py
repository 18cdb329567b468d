"""A running mailfleet signs what leaves the fleet, and only that: relayed mail from relay_networks and mail of an
authenticated user carry signatures that verify at the sink; mail from an outside client is never signed; the
gateway's own DSNs are signed; a forwarded message is ARC-sealed and its chain verifies."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import dkim
import dns.resolver
from peers.named import free_port
from peers.smtp_sink import start_sink

from .conftest import SigningDNS

DKIMVERIFY = str(Path(sys.executable).parent / "dkimverify")
RELAYED = "127.0.41.8"  # in relay_networks
OUTSIDE = "127.0.41.30"  # mail.outside.test
SINK = "127.0.41.20"


def _hash() -> str:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "hash-password", "--password-stdin"],
                          input="s3cret-Pass\n", capture_output=True, text=True, check=True).stdout.strip()


def _message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\nHello.\r\n").encode()


def _send(server, source: str, sender: str, rcpts: list[str], data: bytes) -> None:
    with smtplib.SMTP(server.address, server.smtp_port, timeout=30, source_address=(source, 0)) as conn:
        conn.sendmail(sender, rcpts, data)


def _gateway(mailfleet_factory, signing_dns: SigningDNS, sink, **more):
    return mailfleet_factory({
        "hostname": "gw.example.org",
        "roles": ["outgoing_gateway"],
        "dns": {"nameservers": [signing_dns.named.address], "port": 53, "timeout": "2s"},
        "outgoing_gateway": {"relay_networks": [f"{RELAYED}/32"]},
        "delivery": {"smarthost": f"{SINK}:{sink.port}"},
        "dkim": {"enabled": True, "keys_dir": str(signing_dns.keys_dir)},
        **more,
    }, address="127.0.41.1", name="gw")


def _arrived(server, sink, count: int) -> list[bytes]:
    server.wait_for(lambda: len(sink.messages) >= count, what=f"{count} message(s) at the sink")
    return [m.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for m in sink.messages]


def _verifies(signing_dns: SigningDNS, message: bytes, index: int) -> bool:
    return signing_dns.run([DKIMVERIFY, "--index", str(index)], message).returncode == 0


def test_relayed_mail_is_signed_outside_mail_is_not_and_dsns_are(mailfleet_factory, signing_dns) -> None:
    sink = start_sink(SINK, free_port([SINK]), rcpt_replies={"gone@example.net": "550 5.1.1 no such user"})
    try:
        server = _gateway(mailfleet_factory, signing_dns, sink)
        _send(server, RELAYED, "alice@example.org", ["bob@example.net"],
              _message("Alice <alice@example.org>", "bob@example.net", "relayed"))
        [relayed] = _arrived(server, sink, 1)
        assert relayed.count(b"DKIM-Signature:") == 2 and b"d=example.org" in relayed
        assert _verifies(signing_dns, relayed, 0) and _verifies(signing_dns, relayed, 1)
        assert signing_dns.run(["opendkim-testmsg"], relayed).returncode == 0

        _send(server, RELAYED, "alice@example.org", ["gone@example.net"],
              _message("Alice <alice@example.org>", "gone@example.net", "bounces"))
        messages = _arrived(server, sink, 2)
        [dsn] = [m for m in messages if b"MAILER-DAEMON@gw.example.org" in m]
        assert b"d=gw.example.org" in dsn
        assert _verifies(signing_dns, dsn, 0) and _verifies(signing_dns, dsn, 1)
    finally:
        sink.stop()


def test_mail_from_outside_to_a_primary_is_not_signed_and_a_users_is(mailfleet_factory, signing_dns) -> None:
    sink = start_sink(SINK, free_port([SINK]))
    try:
        server = mailfleet_factory({
            "hostname": "mx.example.org",
            "roles": ["primary"],
            "dns": {"nameservers": [signing_dns.named.address], "port": 53, "timeout": "2s"},
            "primary": {"domains": ["example.org"],
                        "users": [{"address": "alice@example.org", "password_hash": _hash()}],
                        "aliases": {"list@example.org": ["alice@example.org", "carol@outside.test"]}},
            "delivery": {"smarthost": f"{SINK}:{sink.port}"},
            "dkim": {"enabled": True, "keys_dir": str(signing_dns.keys_dir), "arc_seal": False},
        }, services=("smtp", "submission"), address="127.0.41.2", name="primary")
        with smtplib.SMTP("127.0.41.2", server.ports["submission"], timeout=30) as conn:
            conn.login("alice@example.org", "s3cret-Pass")
            conn.sendmail("alice@example.org", ["dave@outside.test"],
                          _message("alice@example.org", "dave@outside.test", "submitted"))
        with smtplib.SMTP("127.0.41.2", server.smtp_port, timeout=30, source_address=(OUTSIDE, 0)) as conn:
            conn.sendmail("bob@outside.test", ["list@example.org"],
                          _message("Alice <alice@example.org>", "list@example.org", "forged from"))
        messages = _arrived(server, sink, 2)
        [submitted] = [m for m in messages if b"Subject: submitted" in m]
        assert _verifies(signing_dns, submitted, 0) and _verifies(signing_dns, submitted, 1)
        [forwarded] = [m for m in messages if b"Subject: forged from" in m]
        assert b"DKIM-Signature" not in forwarded
    finally:
        sink.stop()


def _dnsfunc(signing_dns: SigningDNS):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [signing_dns.named.address]

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)
    return txt


def test_forwarded_mail_is_arc_sealed_and_the_chain_verifies(mailfleet_factory, signing_dns) -> None:
    sink = start_sink(SINK, free_port([SINK]))
    try:
        server = mailfleet_factory({
            "hostname": "in.example.org",
            "roles": ["incoming_gateway"],
            "dns": {"nameservers": [signing_dns.named.address], "port": 53, "timeout": "2s"},
            "incoming_gateway": {"domains": {"fwd.example.org": {"destinations": [f"{SINK}:{sink.port}"],
                                                                 "verify": "none"}}},
            "sender_auth": {"enabled": True},
            "dkim": {"enabled": True, "keys_dir": str(signing_dns.keys_dir), "arc_domain": "example.org"},
        }, address="127.0.41.3", name="incoming")
        _send(server, OUTSIDE, "bob@outside.test", ["carol@fwd.example.org"],
              _message("Bob <bob@outside.test>", "carol@fwd.example.org", "forwarded"))
        [message] = _arrived(server, sink, 1)
        assert b"ARC-Seal: " in message and b"ARC-Authentication-Results: i=1; in.example.org" in message
        assert b"spf=pass" in message.split(b"ARC-Authentication-Results:", 1)[1].split(b"\r\n\r\n")[0]
        assert b"DKIM-Signature" not in message  # forwarded from outside: sealed, never DKIM-signed
        cv, results, reason = dkim.arc_verify(message, dnsfunc=_dnsfunc(signing_dns))
        assert cv == dkim.CV_Pass, (reason, results)
        assert results[0]["cv"] == b"none"  # the first hop (RFC 8617 §5.1.1)
    finally:
        sink.stop()
