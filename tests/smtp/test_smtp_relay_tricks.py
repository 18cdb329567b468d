"""Relay attempts from outside the whitelist with every address trick a spammer (or an old MTA) knows.

The host holds all four roles (so every kind of served domain is there to hide behind) and relays for
127.0.0.1/32 only; the attacker connects from 127.0.0.2 or ::1. Mail it would relay goes to a loopback
smarthost sink, so a relay that slipped through is caught there, never sent to the world. Each trick must be
refused at RCPT with a 5xx reply that carries an enhanced code and a reason, and must leave nothing behind.
"""

from __future__ import annotations

import pytest
from peers.mailfleet import RunningMailfleet

from .probes import Evidence, RawSession, marker, message, needs_ipv6, send, world

OUTSIDE = "127.0.0.2"
INSIDE = "127.0.0.1"

RELAY_DENIED = {(554, "5.7.1")}
ROUTING = {(550, "5.7.1")}  # sender-specified routing refused outright (Postfix: allow_untrusted_routing = no)
LITERAL = {(550, "5.1.2")}
MALFORMED = {(501, "5.1.3"), (553, "5.1.3"), (501, "5.1.2"), (501, "5.5.4")}

# (RCPT TO argument without the angle brackets, acceptable (code, enhanced) replies)
TRICKS = [
    pytest.param("user@victim.example", RELAY_DENIED, id="plain-remote"),
    pytest.param("user%victim.example@example.org", ROUTING, id="percent-hack-local"),
    pytest.param("user%victim.example@example.com", ROUTING, id="percent-hack-backup-domain"),
    pytest.param("user%victim.example@example.net", ROUTING, id="percent-hack-forwarded-domain"),
    pytest.param("user%victim.example", MALFORMED, id="percent-hack-no-domain"),
    pytest.param("victim.example!user@example.org", ROUTING, id="bang-path-local"),
    pytest.param("victim.example!user", MALFORMED, id="bang-path-alone"),
    pytest.param("@example.org:user@victim.example", RELAY_DENIED, id="source-route"),
    pytest.param("@example.org,@example.net:user@victim.example", RELAY_DENIED, id="source-route-two-hops"),
    pytest.param('"user@victim.example"@example.org', ROUTING, id="quoted-at-local"),
    pytest.param('"user%victim.example"@example.org', ROUTING, id="quoted-percent-local"),
    pytest.param('"user@victim.example"@example.net', ROUTING, id="quoted-at-forwarded"),
    pytest.param('"user\\@victim.example"@example.org', ROUTING, id="quoted-escaped-at"),
    pytest.param('"user@victim.example"', MALFORMED, id="quoted-without-domain"),
    pytest.param("user@victim.example@example.org", MALFORMED, id="two-at-signs"),
    pytest.param("user\\@victim.example@example.org", MALFORMED, id="escaped-at-unquoted"),
    pytest.param("user@[IPv6:::1]", LITERAL, id="ipv6-literal"),
    pytest.param("user@[IPv6:::ffff:127.0.0.1]", LITERAL, id="ipv4-mapped-literal"),
    pytest.param("user@[127.0.0.1]", LITERAL, id="ipv4-literal"),
    pytest.param("user@[127.0.0.2]", LITERAL, id="ipv4-literal-client"),
    pytest.param("user@[example.org]", MALFORMED, id="bracketed-name"),
    pytest.param("alice@example.org.", MALFORMED, id="trailing-dot-local"),
    pytest.param("user@victim.example.", MALFORMED, id="trailing-dot-remote"),
    pytest.param("user@example.org..", MALFORMED, id="two-trailing-dots"),
    pytest.param("user@VICTIM.EXAMPLE", RELAY_DENIED, id="upper-case-remote"),
    pytest.param("user@evil-example.org", RELAY_DENIED, id="suffix-without-dot"),
    pytest.param("user@example.org.evil.test", RELAY_DENIED, id="local-domain-as-prefix"),
    pytest.param("user@sub.example.org", RELAY_DENIED, id="subdomain-of-local"),
    pytest.param("user@mail.example.net", RELAY_DENIED, id="subdomain-of-forwarded"),
    pytest.param("user@ex\u0430mple.org", RELAY_DENIED, id="cyrillic-homoglyph"),
    pytest.param("user@example\uff0eorg", MALFORMED, id="fullwidth-dot"),
    pytest.param("user@localhost", MALFORMED, id="localhost"),
]


@pytest.fixture(scope="module")
def host(module_mailfleet, sinks, password_hash) -> tuple[RunningMailfleet, Evidence]:
    """Every role on one host; relay_networks 127.0.0.1/32 only."""
    listed, dest, relayed = sinks(), sinks(), sinks()
    server = module_mailfleet({
        "roles": ["primary", "backup_mx", "incoming_gateway", "outgoing_gateway"],
        "primary": {"domains": ["example.org"],
                    "users": [{"address": "alice@example.org", "password_hash": password_hash}],
                    "aliases": {"postmaster@example.org": ["alice@example.org"]}},
        "backup_mx": {"domains": {"example.com": {"primary_hosts": [f"127.0.0.1:{listed.port}"]}}},
        "incoming_gateway": {"domains": {"example.net": {"destinations": [f"127.0.0.1:{dest.port}"]}}},
        "outgoing_gateway": {"relay_networks": ["127.0.0.1/32"]},
        "delivery": world(relayed),
    }, name="tricks", dual_stack=True)
    return server, Evidence(server, (listed, dest, relayed))


@pytest.fixture(scope="module")
def evidence(host) -> Evidence:
    return host[1]


def _assert_refused(reply, allowed: set[tuple[int, str]]) -> None:
    parts = reply.lines[-1].split(" ", 1)
    assert (reply.code, parts[0]) in allowed, f"{reply} not in {sorted(allowed)}"
    assert len(parts) == 2 and parts[1].strip(), f"no reason given: {reply}"


@pytest.mark.parametrize(("rcpt", "allowed"), TRICKS)
def test_relay_trick_from_outside_is_refused_and_leaves_nothing(evidence, rcpt, allowed):
    mark = marker()
    utf8 = "" if rcpt.isascii() else "SMTPUTF8"  # else refused for that alone (553 5.6.7)
    result = send(evidence.server.smtp_port, [rcpt], mark, source=OUTSIDE, mail_params=utf8)
    _assert_refused(result.rcpts[rcpt], allowed)
    assert result.data_command.code == 503, result
    evidence.assert_nothing(mark)
    assert not evidence.server.queue_ids()


@needs_ipv6
@pytest.mark.parametrize("rcpt", ["user@victim.example", "@example.org:user@victim.example",
                                  "user%victim.example@example.org", "user@[IPv6:::1]"])
def test_relay_trick_over_ipv6_from_outside_is_refused(evidence, rcpt):
    mark = marker()
    result = send(evidence.server.smtp_port, [rcpt], mark, host="::1")
    assert result.rcpts[rcpt].code >= 550 and result.rcpts[rcpt].has_enhanced_code(), result.rcpts[rcpt]
    assert result.data is None
    evidence.assert_nothing(mark)


@pytest.mark.parametrize("rcpt", ["user%victim.example@example.org", "victim.example!user@example.org",
                                  '"user@victim.example"@example.org', "user@[127.0.0.1]"])
def test_routing_tricks_are_refused_even_for_a_whitelisted_client(evidence, rcpt):
    """The whitelist grants relaying to real domains, not to hidden routes a downstream MTA might follow."""
    mark = marker()
    result = send(evidence.server.smtp_port, [rcpt], mark, source=INSIDE)
    assert result.rcpts[rcpt].code == 550, result.rcpts[rcpt]
    evidence.assert_nothing(mark)


def test_tricks_mixed_into_an_accepted_transaction_do_not_ride_along(evidence):
    """One good local recipient among every trick: the message goes to alice only, nothing is relayed."""
    mark = marker()
    tricks = [p.values[0] for p in TRICKS]
    result = send(evidence.server.smtp_port, ["alice@example.org", *tricks], mark, source=OUTSIDE,
                  mail_params="SMTPUTF8")
    assert result.rcpts["alice@example.org"].code == 250
    assert [r for r in tricks if result.rcpts[r].code < 500] == []
    assert result.data is not None and result.data.code == 250
    evidence.assert_on_disk(result.queue_id, mark)
    evidence.wait_mailbox("alice@example.org", mark)
    evidence.wait_spool_empty()
    assert not evidence.sink_messages(mark), "part of the message was relayed"
    assert len(evidence.mailbox_files(mark)) == 1


def test_source_route_to_a_local_mailbox_is_delivered_locally_route_ignored(evidence):
    """RFC 5321 §4.1.1.3 / Appendix C: the route is ignored, the mailbox alone counts."""
    mark = marker()
    result = send(evidence.server.smtp_port, ["@victim.example:alice@example.org"], mark, source=OUTSIDE)
    assert result.data is not None and result.data.code == 250, result
    evidence.wait_mailbox("alice@example.org", mark)
    evidence.wait_spool_empty()
    assert not evidence.sink_messages(mark)


def test_postmaster_without_domain_is_accepted(evidence):
    """RFC 5321 §4.5.1: RCPT TO:<Postmaster> with no domain MUST be accepted by a mail-serving host."""
    mark = marker()
    result = send(evidence.server.smtp_port, ["Postmaster"], mark, source=OUTSIDE)
    assert result.rcpts["Postmaster"].code == 250, result.rcpts["Postmaster"]
    evidence.wait_mailbox("alice@example.org", mark)


def test_recipient_without_angle_brackets_is_judged_the_same(evidence):
    mark = marker()
    with RawSession("127.0.0.1", evidence.server.smtp_port, OUTSIDE) as session:
        session.ehlo()
        assert session.cmd("MAIL FROM:<a@client.example>").code == 250
        reply = session.cmd("RCPT TO:user@victim.example")
        assert reply.code >= 500 and reply.has_enhanced_code(), reply
        reply = session.cmd("RCPT TO: <user@victim.example>")
        assert (reply.code, reply.lines[-1][:5]) == (554, "5.7.1"), reply
        assert session.cmd("DATA").code == 503
        session.cmd("RSET")
        assert session.cmd("MAIL FROM:<a@client.example>").code == 250
        assert session.cmd("RCPT TO:<alice@example.org>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(mark) + b".\r\n")
        assert session.reply().code == 250
    evidence.wait_mailbox("alice@example.org", mark)
    assert not evidence.sink_messages(mark)
