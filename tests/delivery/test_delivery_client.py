"""The outbound engine against real peers: BIND named for MX data, aiosmtpd sinks on 127.0.0.x to deliver to."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import pytest
from peers.named import free_port
from peers.tls import self_signed_cert
from waits import wait_until_async

from appliance.config.model import DeliveryConfig
from appliance.delivery.client import Deliverer, Framing, HostsTarget, MXTarget

HELO = "out.mailfleet.test"
MESSAGE = b"From: alice@sender.test\r\nTo: bob@dest.test\r\nSubject: hello\r\n\r\nHello Bob.\r\n"

ZONE = """
ordered          IN MX 10 mx1.ordered
ordered          IN MX 20 mx2.ordered
mx1.ordered      IN A 127.0.0.31
mx2.ordered      IN A 127.0.0.32
deadfirst        IN MX 10 mx1.deadfirst
deadfirst        IN MX 20 mx2.deadfirst
mx1.deadfirst    IN A 127.0.0.41
mx2.deadfirst    IN A 127.0.0.42
busyfirst        IN MX 10 mx1.busyfirst
busyfirst        IN MX 20 mx2.busyfirst
mx1.busyfirst    IN A 127.0.0.43
mx2.busyfirst    IN A 127.0.0.44
unknownfirst     IN MX 10 gone.unknownfirst
unknownfirst     IN MX 20 mx2.unknownfirst
mx2.unknownfirst IN A 127.0.0.45
alldead          IN MX 10 mx1.alldead
mx1.alldead      IN A 127.0.0.46
implicit         IN A 127.0.0.47
nullmx           IN MX 0 .
v6               IN MX 10 mx.v6
mx.v6            IN AAAA ::1
selfbest         IN MX 10 us
selfbest         IN MX 20 other
selfsecond       IN MX 10 other
selfsecond       IN MX 20 us
dualstack        IN MX 10 mx.dualstack
mx.dualstack     IN AAAA ::1
mx.dualstack     IN A 127.0.0.32
us               IN A 127.0.0.61
other            IN A 127.0.0.62
"""


def loopback_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def named(named_factory):
    return named_factory({"mailfleet.test": ZONE})


@pytest.fixture
def port() -> int:
    """One port shared by every sink of a test, free on all the addresses the zone uses."""
    addresses = [f"127.0.0.{n}" for n in (31, 32, 41, 42, 43, 44, 45, 46, 47, 51, 61, 62)]
    return free_port(addresses + (["::1"] if loopback_v6() else []))


@pytest.fixture
def deliverer(named):
    return Deliverer(HELO, named.resolver(), DeliveryConfig(connect_timeout=5, command_timeout=10))


async def test_best_mx_gets_the_mail(deliverer, smtp_sink, port) -> None:
    best = smtp_sink("127.0.0.31", port)
    second = smtp_sink("127.0.0.32", port)
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port),
        "a@sender.test",
        ["bob@ordered.mailfleet.test"],
        MESSAGE,
        queue_id="Q1",
    )
    assert results["bob@ordered.mailfleet.test"].ok
    assert results["bob@ordered.mailfleet.test"].remote_host == "mx1.ordered.mailfleet.test[127.0.0.31]"
    assert [m.rcpt_tos for m in best.messages] == [("bob@ordered.mailfleet.test",)]
    assert best.messages[0].data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    assert best.messages[0].helo == HELO
    assert second.messages == []


async def test_dead_mx_falls_back_to_the_next(deliverer, smtp_sink, port) -> None:
    backup = smtp_sink("127.0.0.42", port)  # nothing listens on 127.0.0.41
    results = await deliverer.deliver(
        MXTarget("deadfirst.mailfleet.test", port), "a@sender.test", ["bob@deadfirst.mailfleet.test"], MESSAGE
    )
    assert results["bob@deadfirst.mailfleet.test"].ok
    assert len(backup.messages) == 1


async def test_busy_greeting_falls_back_to_the_next(deliverer, smtp_sink, refusing_smtp, port) -> None:
    busy = refusing_smtp("127.0.0.43", port, "421 4.3.2 too busy")
    backup = smtp_sink("127.0.0.44", port)
    results = await deliverer.deliver(
        MXTarget("busyfirst.mailfleet.test", port), "a@sender.test", ["bob@busyfirst.mailfleet.test"], MESSAGE
    )
    assert results["bob@busyfirst.mailfleet.test"].ok
    assert busy.connections == 1
    assert len(backup.messages) == 1


async def test_unresolvable_mx_host_is_skipped(deliverer, smtp_sink, port) -> None:
    backup = smtp_sink("127.0.0.45", port)
    results = await deliverer.deliver(
        MXTarget("unknownfirst.mailfleet.test", port), "a@sender.test", ["bob@unknownfirst.mailfleet.test"], MESSAGE
    )
    assert results["bob@unknownfirst.mailfleet.test"].ok
    assert len(backup.messages) == 1


async def test_all_mx_down_is_temporary(deliverer, port) -> None:
    results = await deliverer.deliver(
        MXTarget("alldead.mailfleet.test", port),
        "a@sender.test",
        ["x@alldead.mailfleet.test", "y@alldead.mailfleet.test"],
        MESSAGE,
    )
    assert set(results) == {"x@alldead.mailfleet.test", "y@alldead.mailfleet.test"}
    for result in results.values():
        assert result.temporary and result.enhanced == "4.4.1", result
        assert "127.0.0.46" in result.text


async def test_implicit_mx_delivers_to_the_address_record(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.47", port)
    results = await deliverer.deliver(
        MXTarget("implicit.mailfleet.test", port), "a@sender.test", ["bob@implicit.mailfleet.test"], MESSAGE
    )
    assert results["bob@implicit.mailfleet.test"].ok
    assert len(sink.messages) == 1


async def test_null_mx_bounces_at_once(deliverer, port) -> None:
    results = await deliverer.deliver(
        MXTarget("nullmx.mailfleet.test", port), "a@sender.test", ["bob@nullmx.mailfleet.test"], MESSAGE
    )
    result = results["bob@nullmx.mailfleet.test"]
    assert result.permanent and result.enhanced == "5.1.10" and result.remote_host is None


async def test_nxdomain_bounces_at_once(deliverer, port) -> None:
    results = await deliverer.deliver(
        MXTarget("nosuch.mailfleet.test", port), "a@sender.test", ["bob@nosuch.mailfleet.test"], MESSAGE
    )
    result = results["bob@nosuch.mailfleet.test"]
    assert result.permanent and result.enhanced == "5.1.2"


async def test_dns_failure_is_temporary(port) -> None:
    from appliance.dns.resolver import Resolver

    dead_dns = Resolver(["127.0.0.1"], port=free_port(["127.0.0.1"]), timeout=0.5)
    results = await Deliverer(HELO, dead_dns).deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    assert results["bob@ordered.mailfleet.test"].temporary
    assert results["bob@ordered.mailfleet.test"].enhanced == "4.4.3"


async def test_per_recipient_results_on_one_connection(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink(
        "127.0.0.31",
        port,
        rcpt_replies={
            "nobody@ordered.mailfleet.test": "550 5.1.1 No such user here",
            "full@ordered.mailfleet.test": "452 4.2.2 Mailbox full",
        },
    )
    rcpts = [
        "bob@ordered.mailfleet.test",
        "nobody@ordered.mailfleet.test",
        "full@ordered.mailfleet.test",
        "carol@ordered.mailfleet.test",
    ]
    results = await deliverer.deliver(MXTarget("ordered.mailfleet.test", port), "a@sender.test", rcpts, MESSAGE)
    assert results["bob@ordered.mailfleet.test"].ok and results["carol@ordered.mailfleet.test"].ok
    refused = results["nobody@ordered.mailfleet.test"]
    assert (refused.code, refused.enhanced, refused.text) == (550, "5.1.1", "No such user here")
    assert refused.permanent and refused.remote_host == "mx1.ordered.mailfleet.test[127.0.0.31]"
    assert results["full@ordered.mailfleet.test"].temporary
    assert sink.handler.sessions == 1
    assert [m.rcpt_tos for m in sink.messages] == [("bob@ordered.mailfleet.test", "carol@ordered.mailfleet.test")]


@pytest.mark.parametrize("reply, permanent", [("554 5.6.0 Content refused", True), ("451 4.3.0 Try later", False)])
async def test_data_reply_applies_to_every_accepted_recipient(deliverer, smtp_sink, port, reply, permanent) -> None:
    smtp_sink("127.0.0.31", port, data_reply=reply, rcpt_replies={"nobody@ordered.mailfleet.test": "550 5.1.1 no"})
    rcpts = ["bob@ordered.mailfleet.test", "carol@ordered.mailfleet.test", "nobody@ordered.mailfleet.test"]
    results = await deliverer.deliver(MXTarget("ordered.mailfleet.test", port), "a@sender.test", rcpts, MESSAGE)
    for rcpt in rcpts[:2]:
        assert results[rcpt].permanent is permanent and results[rcpt].temporary is not permanent
        assert f"{results[rcpt].code} {results[rcpt].enhanced} {results[rcpt].text}" == reply
    assert results["nobody@ordered.mailfleet.test"].enhanced == "5.1.1"


async def test_opportunistic_starttls_without_verification(deliverer, smtp_sink, port, tmp_path, caplog) -> None:
    cert = self_signed_cert(tmp_path, "mx1.ordered.mailfleet.test")
    tls_sink = smtp_sink("127.0.0.31", port, tls_context=cert.server_context())
    caplog.set_level(logging.INFO, logger="appliance.delivery")
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port),
        "a@sender.test",
        ["bob@ordered.mailfleet.test"],
        MESSAGE,
        queue_id="TLS1",
    )
    assert results["bob@ordered.mailfleet.test"].ok
    assert tls_sink.messages[0].tls is True
    assert any("queue_id=TLS1" in r.getMessage() and "tls=yes" in r.getMessage() for r in caplog.records)


async def test_plaintext_when_the_peer_offers_no_starttls(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port)
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    assert results["bob@ordered.mailfleet.test"].ok and sink.messages[0].tls is False


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
async def test_failed_tls_handshake_retries_in_plaintext(deliverer, smtp_sink, port, tmp_path) -> None:
    cert = self_signed_cert(tmp_path, "mx1.ordered.mailfleet.test")
    context = cert.server_context()
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA")  # no TLS 1.2 suite our client will take ...
    context.maximum_version = ssl.TLSVersion.TLSv1  # ... and a version it refuses: the handshake fails
    sink = smtp_sink("127.0.0.31", port, tls_context=context)
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    assert results["bob@ordered.mailfleet.test"].ok, results
    assert sink.handler.sessions == 2
    assert [m.tls for m in sink.messages] == [False]


UTF8_RCPT = "jörg@ordered.mailfleet.test"


async def test_smtputf8_sender_to_a_peer_without_it_is_refused_for_all(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, smtputf8=False)
    rcpts = ["bob@ordered.mailfleet.test", UTF8_RCPT]
    results = await deliverer.deliver(MXTarget("ordered.mailfleet.test", port), "rené@sender.test", rcpts, MESSAGE)
    for rcpt in rcpts:
        assert results[rcpt].permanent and results[rcpt].enhanced == "5.6.7"
    assert sink.messages == []


async def test_utf8_recipient_alone_is_refused_when_the_peer_lacks_smtputf8(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, smtputf8=False)
    rcpts = ["bob@ordered.mailfleet.test", UTF8_RCPT]
    results = await deliverer.deliver(MXTarget("ordered.mailfleet.test", port), "a@sender.test", rcpts, MESSAGE)
    assert results["bob@ordered.mailfleet.test"].ok
    assert results[UTF8_RCPT].permanent and results[UTF8_RCPT].enhanced == "5.6.7"
    assert [m.rcpt_tos for m in sink.messages] == [("bob@ordered.mailfleet.test",)]
    assert "SMTPUTF8" not in sink.messages[0].mail_options


async def test_utf8_headers_need_smtputf8(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, smtputf8=False)
    message = "From: René <rene@sender.test>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "rene@sender.test", ["bob@ordered.mailfleet.test"], message
    )
    assert results["bob@ordered.mailfleet.test"].enhanced == "5.6.7"
    assert sink.messages == []


async def test_smtputf8_and_8bitmime_are_used_when_offered(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port)
    message = "From: René <rené@sender.test>\r\nSubject: Grüße\r\n\r\nHallo – schön\r\n".encode()
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "rené@sender.test", [UTF8_RCPT], message
    )
    assert results[UTF8_RCPT].ok, results
    received = sink.messages[0]
    assert received.mail_from == "rené@sender.test" and received.rcpt_tos == (UTF8_RCPT,)
    assert "SMTPUTF8" in received.mail_options and "BODY=8BITMIME" in received.mail_options
    assert received.data.replace(b"\r\n", b"\n") == message.replace(b"\r\n", b"\n")


async def test_message_over_the_peer_size_limit_bounces(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, size_limit=2000)
    big = MESSAGE + b"x" * 5000 + b"\r\n"
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], big
    )
    assert results["bob@ordered.mailfleet.test"].permanent
    assert results["bob@ordered.mailfleet.test"].enhanced == "5.3.4"
    assert sink.messages == []
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    assert results["bob@ordered.mailfleet.test"].ok
    assert f"SIZE={len(MESSAGE)}" in sink.messages[0].mail_options


# The sink holds every DATA until as many sessions as the limit allows are open at once, so that they overlap
# however busy the machine is.
@pytest.mark.parametrize("limit", [2, 6])
async def test_concurrency_limit_per_destination(named, smtp_sink, port, limit) -> None:
    sink = smtp_sink("127.0.0.31", port, hold=10, hold_until_active=limit)
    deliverer = Deliverer(HELO, named.resolver(), DeliveryConfig(concurrency_per_destination=limit))
    target = MXTarget("ordered.mailfleet.test", port)
    results = await asyncio.gather(
        *(deliverer.deliver(target, "a@sender.test", [f"u{i}@ordered.mailfleet.test"], MESSAGE) for i in range(6))
    )
    assert all(r[f"u{i}@ordered.mailfleet.test"].ok for i, r in enumerate(results))
    assert len(sink.messages) == 6
    # The limit is reached (every session is held in DATA at the same time) and never exceeded.
    assert sink.handler.max_active == limit


async def test_source_address_binding_ipv4(named, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port)
    sources = ["127.0.0.2", "::1"] if loopback_v6() else ["127.0.0.2"]
    deliverer = Deliverer(HELO, named.resolver(), DeliveryConfig(source_addresses=tuple(sources)))
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    assert results["bob@ordered.mailfleet.test"].ok
    assert sink.messages[0].peer_address == "127.0.0.2"


async def test_unbound_source_is_the_systems_choice(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port)
    await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    assert sink.messages[0].peer_address != "127.0.0.2"  # the control for the binding test above


@pytest.mark.skipif(not loopback_v6(), reason="no IPv6 loopback on this machine")
async def test_ipv6_mx_with_ipv6_source(named, smtp_sink, port) -> None:
    sink = smtp_sink("::1", port)
    deliverer = Deliverer(HELO, named.resolver(), DeliveryConfig(source_addresses=("127.0.0.2", "::1")))
    results = await deliverer.deliver(
        MXTarget("v6.mailfleet.test", port), "a@sender.test", ["bob@v6.mailfleet.test"], MESSAGE
    )
    assert results["bob@v6.mailfleet.test"].ok
    assert results["bob@v6.mailfleet.test"].remote_host == "mx.v6.mailfleet.test[::1]"
    assert sink.messages[0].peer_address == "::1"


async def test_hosts_target_in_order_with_failover(deliverer, smtp_sink, port) -> None:
    first = smtp_sink("127.0.0.31", port)
    second = smtp_sink("127.0.0.32", port)
    target = HostsTarget((("127.0.0.41", port), ("127.0.0.31", port), ("127.0.0.32", port)))
    results = await deliverer.deliver(target, "a@sender.test", ["bob@primary.test"], MESSAGE)
    assert results["bob@primary.test"].ok and results["bob@primary.test"].remote_host == "127.0.0.31"
    assert len(first.messages) == 1 and second.messages == []


async def test_hosts_target_by_name(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.32", port)
    target = HostsTarget((("mx2.ordered.mailfleet.test", port),))
    results = await deliverer.deliver(target, "a@sender.test", ["bob@primary.test"], MESSAGE)
    assert results["bob@primary.test"].ok and len(sink.messages) == 1


async def test_we_never_deliver_to_ourselves_as_best_mx(named, smtp_sink, port) -> None:
    us = smtp_sink("127.0.0.61", port)
    other = smtp_sink("127.0.0.62", port)
    deliverer = Deliverer(HELO, named.resolver(), own_addresses=["127.0.0.61"])
    results = await deliverer.deliver(
        MXTarget("selfbest.mailfleet.test", port), "a@sender.test", ["bob@selfbest.mailfleet.test"], MESSAGE
    )
    assert results["bob@selfbest.mailfleet.test"].enhanced == "5.4.6"
    assert "loops back to myself" in results["bob@selfbest.mailfleet.test"].text
    assert us.messages == [] and other.messages == []


async def test_only_better_mx_than_ourselves_are_tried(named, smtp_sink, port) -> None:
    us = smtp_sink("127.0.0.61", port)
    deliverer = Deliverer(HELO, named.resolver(), DeliveryConfig(connect_timeout=5), own_addresses=["127.0.0.61"])
    # The better MX (127.0.0.62) is down: retry later, never hand the mail to ourselves.
    results = await deliverer.deliver(
        MXTarget("selfsecond.mailfleet.test", port), "a@sender.test", ["bob@selfsecond.mailfleet.test"], MESSAGE
    )
    assert results["bob@selfsecond.mailfleet.test"].temporary
    assert us.handler.sessions == 0
    other = smtp_sink("127.0.0.62", port)
    results = await deliverer.deliver(
        MXTarget("selfsecond.mailfleet.test", port), "a@sender.test", ["bob@selfsecond.mailfleet.test"], MESSAGE
    )
    assert results["bob@selfsecond.mailfleet.test"].ok and len(other.messages) == 1


async def test_one_log_line_per_attempt(deliverer, smtp_sink, port, caplog) -> None:
    smtp_sink("127.0.0.42", port)
    caplog.set_level(logging.INFO, logger="appliance.delivery")
    await deliverer.deliver(
        MXTarget("deadfirst.mailfleet.test", port),
        "a@sender.test",
        ["a@deadfirst.mailfleet.test", "b@deadfirst.mailfleet.test"],
        MESSAGE,
        queue_id="Q77",
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "appliance.delivery"]
    assert len(lines) == 2
    assert "queue_id=Q77" in lines[0] and "host=mx1.deadfirst.mailfleet.test" in lines[0]
    assert "result=421/4.4.1" in lines[0] and "rcpts=2" in lines[0]
    assert "host=mx2.deadfirst.mailfleet.test" in lines[1] and "result=250/2.0.0" in lines[1]
    assert "delivered=2" in lines[1] and "duration=" in lines[1]


async def test_wildcard_listener_counts_all_loopback_as_ourselves(named, smtp_sink, port) -> None:
    us = smtp_sink("127.0.0.61", port)
    deliverer = Deliverer(HELO, named.resolver(), own_addresses=["0.0.0.0"])
    results = await deliverer.deliver(
        MXTarget("selfbest.mailfleet.test", port), "a@sender.test", ["bob@selfbest.mailfleet.test"], MESSAGE
    )
    assert results["bob@selfbest.mailfleet.test"].enhanced == "5.4.6"
    assert us.handler.sessions == 0


async def test_too_many_recipients_go_in_follow_up_transactions(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, max_rcpts=2)
    rcpts = [f"u{i}@ordered.mailfleet.test" for i in range(5)]
    results = await deliverer.deliver(MXTarget("ordered.mailfleet.test", port), "a@sender.test", rcpts, MESSAGE)
    assert all(results[r].ok for r in rcpts), results
    assert sink.handler.sessions == 1  # RFC 5321 §4.5.3.1.10: same connection, new transactions
    assert [m.rcpt_tos for m in sink.messages] == [tuple(rcpts[0:2]), tuple(rcpts[2:4]), tuple(rcpts[4:5])]


async def test_452_for_the_first_recipient_is_an_ordinary_deferral(deliverer, smtp_sink, port) -> None:
    smtp_sink("127.0.0.31", port, rcpt_replies={"a@ordered.mailfleet.test": "452 4.2.2 Mailbox full"})
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port),
        "a@sender.test",
        ["a@ordered.mailfleet.test", "b@ordered.mailfleet.test"],
        MESSAGE,
    )
    assert results["a@ordered.mailfleet.test"].temporary and results["b@ordered.mailfleet.test"].ok


async def test_addresses_with_line_breaks_are_never_sent(deliverer, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port)
    evil = "x@ordered.mailfleet.test>\r\nRCPT TO:<victim@elsewhere.test"
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", [evil, "bob@ordered.mailfleet.test"], MESSAGE
    )
    assert results[evil].permanent and results[evil].enhanced == "5.1.3"
    assert results["bob@ordered.mailfleet.test"].ok
    assert [m.rcpt_tos for m in sink.messages] == [("bob@ordered.mailfleet.test",)]
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test>\r\nRSET", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    assert results["bob@ordered.mailfleet.test"].enhanced == "5.1.7"
    assert len(sink.messages) == 1


async def test_5xx_greeting_everywhere_is_a_deferral(deliverer, refusing_smtp, port) -> None:
    refusing_smtp("127.0.0.31", port, "554 5.7.1 go away")
    refusing_smtp("127.0.0.32", port, "554 5.7.1 go away")
    results = await deliverer.deliver(
        MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
    )
    result = results["bob@ordered.mailfleet.test"]
    assert result.temporary and result.enhanced == "4.7.1", result
    assert "refused to talk to me: 554 go away" in result.text


async def test_silent_mx_times_out_and_the_next_one_takes_the_mail(named, smtp_sink, port) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tarpit:  # accepts TCP, never greets
        tarpit.bind(("127.0.0.31", port))
        tarpit.listen(8)
        backup = smtp_sink("127.0.0.32", port)
        deliverer = Deliverer(HELO, named.resolver(), DeliveryConfig(connect_timeout=0.5, command_timeout=5))
        results = await deliverer.deliver(
            MXTarget("ordered.mailfleet.test", port), "a@sender.test", ["bob@ordered.mailfleet.test"], MESSAGE
        )
    assert results["bob@ordered.mailfleet.test"].ok
    assert len(backup.messages) == 1


@pytest.mark.skipif(not loopback_v6(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("listening", ["127.0.0.32", "::1"])
async def test_one_mx_host_tries_each_of_its_addresses(named, smtp_sink, port, listening) -> None:
    sink = smtp_sink(listening, port)  # the other address of the host refuses connections
    deliverer = Deliverer(HELO, named.resolver(prefer_ipv6=True), DeliveryConfig(connect_timeout=5))
    results = await deliverer.deliver(
        MXTarget("dualstack.mailfleet.test", port), "a@sender.test", ["bob@dualstack.mailfleet.test"], MESSAGE
    )
    assert results["bob@dualstack.mailfleet.test"].ok, results
    assert results["bob@dualstack.mailfleet.test"].remote_host == f"mx.dualstack.mailfleet.test[{listening}]"
    assert len(sink.messages) == 1


async def test_the_next_message_to_a_host_reuses_the_open_session(named, smtp_sink, port) -> None:
    deliverer = Deliverer(HELO, named.resolver(),
                           DeliveryConfig(connect_timeout=5, command_timeout=10, connection_reuse_time=0.5))
    sink = smtp_sink("127.0.0.51", port)
    for n in range(3):
        results = await deliverer.deliver(HostsTarget((("127.0.0.51", port),)), "a@sender.test",
                                          [f"r{n}@dest.test"], MESSAGE)
        assert results[f"r{n}@dest.test"].ok
    assert [m.rcpt_tos for m in sink.messages] == [("r0@dest.test",), ("r1@dest.test",), ("r2@dest.test",)]
    assert sink.handler.sessions == 1
    # Idle beyond connection_idle: the session is closed with QUIT, nothing stays open.
    await wait_until_async(lambda: sink.handler.active == 0, 5, "the idle session to be closed")


async def test_a_kept_session_the_peer_dropped_is_replaced(named, smtp_sink, port) -> None:
    deliverer = Deliverer(HELO, named.resolver(),
                           DeliveryConfig(connect_timeout=5, command_timeout=10, connection_reuse_time=30))
    first = smtp_sink("127.0.0.51", port)
    target = HostsTarget((("127.0.0.51", port),))
    assert (await deliverer.deliver(target, "a@sender.test", ["r1@dest.test"], MESSAGE))["r1@dest.test"].ok
    first.stop()  # the peer restarts: the kept session is dead
    second = smtp_sink("127.0.0.51", port)
    results = await deliverer.deliver(target, "a@sender.test", ["r2@dest.test"], MESSAGE)
    assert results["r2@dest.test"].ok
    assert [m.rcpt_tos for m in second.messages] == [("r2@dest.test",)]
    assert second.handler.sessions == 1


@pytest.mark.parametrize("body, arrives", [
    (b".first line\r\n.\r\n..two\r\nlast . line\r\n", b".first line\r\n.\r\n..two\r\nlast . line\r\n"),
    (b"Subject: no final line end\r\n\r\n.x", b"Subject: no final line end\r\n\r\n.x\r\n"),
    (b"Subject: bare LF\n\n.dot\nend\n", b"Subject: bare LF\r\n\r\n.dot\r\nend\r\n"),  # repaired, then stuffed
    (b"Subject: no dot lines\r\n\r\nbody . with dots.\r\n", b"Subject: no dot lines\r\n\r\nbody . with dots.\r\n"),
])
async def test_data_is_dot_stuffed_and_arrives_unchanged(deliverer, smtp_sink, port, body, arrives) -> None:
    sink = smtp_sink("127.0.0.51", port)
    results = await deliverer.deliver(HostsTarget((("127.0.0.51", port),)), "a@sender.test", ["r@dest.test"], body)
    assert results["r@dest.test"].ok
    assert sink.messages[0].data == arrives
    if b"\r\n" in body and body.count(b"\n") == body.count(b"\r\n"):
        # Known CRLF-only (what the SMTP listener marks in the spool): the same bytes by the short way.
        again = await deliverer.deliver(HostsTarget((("127.0.0.51", port),)), "a@sender.test", ["r@dest.test"],
                                        body, known=Framing(crlf_only=True))
        assert again["r@dest.test"].ok
        assert sink.messages[1].data == arrives
    if not body.startswith(b".") and b"\n." not in body and body.count(b"\n") == body.count(b"\r\n"):
        # Also known free of dot lines (the listener saw none): sent without the stuffing pass, arrives the same.
        third = await deliverer.deliver(HostsTarget((("127.0.0.51", port),)), "a@sender.test", ["r@dest.test"],
                                        body, known=Framing(crlf_only=True, dot_free=True))
        assert third["r@dest.test"].ok
        assert sink.messages[-1].data == arrives


async def test_a_session_whose_data_answer_timed_out_is_not_kept(named, smtp_sink, port) -> None:
    deliverer = Deliverer(HELO, named.resolver(),
                           DeliveryConfig(connect_timeout=5, command_timeout=1, connection_reuse_time=30))
    sink = smtp_sink("127.0.0.51", port, hold=2.0)
    target = HostsTarget((("127.0.0.51", port),))
    first = await deliverer.deliver(target, "a@sender.test", ["r1@dest.test"], MESSAGE)
    assert first["r1@dest.test"].temporary  # no answer in time: retried later, maybe a duplicate, never lost
    sink.handler.hold = 0.0
    second = await deliverer.deliver(target, "a@sender.test", ["r2@dest.test"], MESSAGE)
    assert second["r2@dest.test"].ok
    # The late answer to the first DATA must not be read as an answer in the second transaction.
    assert sink.handler.sessions == 2
    assert ("r2@dest.test",) in [m.rcpt_tos for m in sink.messages]


# ------------------------------------------------------------------ RFC 2920 PIPELINING towards peers that offer it


@pytest.fixture
def reusing(named) -> Deliverer:
    return Deliverer(HELO, named.resolver(),
                           DeliveryConfig(connect_timeout=5, command_timeout=10, connection_reuse_time=30))


async def test_pipelined_per_recipient_results_and_the_session_carries_on(reusing, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, pipelining=True, rcpt_replies={
        "nobody@ordered.mailfleet.test": "550 5.1.1 No such user here",
        "full@ordered.mailfleet.test": "452 4.2.2 Mailbox full"})
    target = MXTarget("ordered.mailfleet.test", port)
    rcpts = ["bob@ordered.mailfleet.test", "nobody@ordered.mailfleet.test", "full@ordered.mailfleet.test",
             "carol@ordered.mailfleet.test"]
    results = await reusing.deliver(target, "a@sender.test", rcpts, MESSAGE)
    assert results["bob@ordered.mailfleet.test"].ok and results["carol@ordered.mailfleet.test"].ok
    assert (results["nobody@ordered.mailfleet.test"].code, results["nobody@ordered.mailfleet.test"].text) == (
        550, "No such user here")
    assert results["full@ordered.mailfleet.test"].temporary
    # Every recipient refused: the transaction is reset, and the same session takes the next message.
    refused = await reusing.deliver(target, "a@sender.test", ["nobody@ordered.mailfleet.test"], MESSAGE)
    assert refused["nobody@ordered.mailfleet.test"].permanent
    again = await reusing.deliver(target, "b@sender.test", ["dave@ordered.mailfleet.test"], b"Subject: 2\r\n\r\n.x\r\n")
    assert again["dave@ordered.mailfleet.test"].ok
    assert sink.handler.sessions == 1
    assert [(m.mail_from, m.rcpt_tos, m.data) for m in sink.messages] == [
        ("a@sender.test", ("bob@ordered.mailfleet.test", "carol@ordered.mailfleet.test"), MESSAGE),
        ("b@sender.test", ("dave@ordered.mailfleet.test",), b"Subject: 2\r\n\r\n.x\r\n")]


async def test_pipelined_data_refusal_applies_to_every_accepted_recipient(reusing, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, pipelining=True, data_reply="554 5.6.0 Content refused")
    target = MXTarget("ordered.mailfleet.test", port)
    rcpts = ["bob@ordered.mailfleet.test", "carol@ordered.mailfleet.test"]
    results = await reusing.deliver(target, "a@sender.test", rcpts, MESSAGE)
    assert all((results[r].code, results[r].text) == (554, "Content refused") for r in rcpts), results
    sink.handler.data_reply = None
    assert (await reusing.deliver(target, "a@sender.test", rcpts, MESSAGE))[rcpts[0]].ok
    assert sink.handler.sessions == 1 and len(sink.messages) == 1


async def test_pipelined_too_many_recipients_go_in_follow_up_transactions(reusing, smtp_sink, port) -> None:
    sink = smtp_sink("127.0.0.31", port, pipelining=True, max_rcpts=2)
    rcpts = [f"u{i}@ordered.mailfleet.test" for i in range(5)]
    results = await reusing.deliver(MXTarget("ordered.mailfleet.test", port), "a@sender.test", rcpts, MESSAGE)
    assert all(results[r].ok for r in rcpts), results
    assert sink.handler.sessions == 1
    assert [m.rcpt_tos for m in sink.messages] == [tuple(rcpts[0:2]), tuple(rcpts[2:4]), tuple(rcpts[4:5])]


async def test_mail_rcpt_and_data_travel_together(deliverer, port) -> None:
    """On the wire: MAIL, both RCPTs and DATA arrive in one write, the message after the 354 (RFC 2920 §3.1);
    a peer that does not announce PIPELINING gets one command at a time (the other tests here)."""
    chunks: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        chunks.append(await reader.read(65536))
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
        chunks.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 2.0.0 queued\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.31", port)
    try:
        rcpts = ["a@ordered.mailfleet.test", "b@ordered.mailfleet.test"]
        results = await deliverer.deliver(HostsTarget((("127.0.0.31", port),)), "s@sender.test", rcpts, MESSAGE)
    finally:
        server.close()
        await server.wait_closed()
    assert all(results[r].ok for r in rcpts), results
    assert chunks[0] == (b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<a@ordered.mailfleet.test>\r\n"
                         b"RCPT TO:<b@ordered.mailfleet.test>\r\nDATA\r\n")
    assert chunks[1] == MESSAGE + b".\r\n"
