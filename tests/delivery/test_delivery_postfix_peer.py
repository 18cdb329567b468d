"""Delivery to Postfix's smtp-sink: a second, independent SMTP server implementation as the peer."""

from __future__ import annotations

import pytest
from peers.named import free_port

from appliance.config.model import DeliveryConfig
from appliance.delivery.client import Deliverer, HostsTarget, MXTarget

pytest_plugins = ["peers.postfix_sink"]  # the `postfix_sink` fixture (harmless if tests/conftest.py lists it)

HELO = "out.mailfleet.test"
MESSAGE = b"From: alice@sender.test\r\nTo: bob@pf.test\r\nSubject: to postfix\r\n\r\n.leading dot\r\nbody\r\n"
ZONE = """
pf       IN MX 10 mx.pf
mx.pf    IN A 127.0.0.71
"""


@pytest.fixture
def deliverer(named_factory) -> Deliverer:
    named = named_factory({"mailfleet.test": ZONE})
    return Deliverer(HELO, named.resolver(), DeliveryConfig(connect_timeout=5, command_timeout=10))


async def test_mx_delivery_to_postfix_smtp_sink(deliverer, postfix_sink) -> None:
    sink = postfix_sink("127.0.0.71", free_port(["127.0.0.71"]))
    rcpts = ["bob@pf.mailfleet.test", "carol@pf.mailfleet.test"]
    results = await deliverer.deliver(MXTarget("pf.mailfleet.test", sink.port), "alice@sender.test", rcpts, MESSAGE)
    assert all(results[r].ok for r in rcpts), results
    [received] = sink.messages()
    assert received["X-Helo-Args"] == HELO
    assert received["X-Mail-Args"].startswith("<alice@sender.test>")
    assert received.get_all("X-Rcpt-Args") == ["<bob@pf.mailfleet.test>", "<carol@pf.mailfleet.test>"]
    assert received["Subject"] == "to postfix"
    # Dot-stuffing undone by the peer (smtp-sink ends each dump with an empty line of its own).
    assert received.get_payload().rstrip("\n") == ".leading dot\nbody"


async def test_helo_fallback_when_ehlo_is_refused(deliverer, postfix_sink) -> None:
    sink = postfix_sink("127.0.0.71", free_port(["127.0.0.71"]), hard_reject=["ehlo"])
    results = await deliverer.deliver(
        HostsTarget((("127.0.0.71", sink.port),)), "alice@sender.test", ["bob@pf.mailfleet.test"], MESSAGE
    )
    assert results["bob@pf.mailfleet.test"].ok, results
    [received] = sink.messages()
    assert received["X-Client-Proto"] == "SMTP"  # plain SMTP after HELO, not ESMTP
    assert received["X-Helo-Args"] == HELO


async def test_soft_rejected_recipients_are_temporary(deliverer, postfix_sink) -> None:
    sink = postfix_sink("127.0.0.71", free_port(["127.0.0.71"]), soft_reject=["rcpt"])
    results = await deliverer.deliver(
        HostsTarget((("127.0.0.71", sink.port),)), "alice@sender.test", ["bob@pf.mailfleet.test"], MESSAGE
    )
    result = results["bob@pf.mailfleet.test"]
    assert result.temporary and result.code // 100 == 4 and result.remote_host == "127.0.0.71"
    assert sink.messages() == []


async def test_8bit_message_is_converted_for_a_peer_without_8bitmime(deliverer, postfix_sink) -> None:
    sink = postfix_sink("127.0.0.71", free_port(["127.0.0.71"]), flags=["-8"])
    body = "Grüße aus Köln – schön\r\n.und ein Punkt\r\n"
    message = b"From: alice@sender.test\r\nSubject: umlauts\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    message += body.encode()
    results = await deliverer.deliver(
        HostsTarget((("127.0.0.71", sink.port),)), "alice@sender.test", ["bob@pf.mailfleet.test"], message
    )
    assert results["bob@pf.mailfleet.test"].ok, results
    [received] = sink.messages()
    assert "BODY=8BITMIME" not in received["X-Mail-Args"]
    raw = received.as_bytes()
    assert raw.isascii()  # nothing 8-bit went over the wire
    assert received["Content-Transfer-Encoding"] == "quoted-printable"
    assert received.get_payload(decode=True).decode().rstrip("\n") == body.replace("\r\n", "\n").rstrip("\n")


async def test_8bit_message_goes_unchanged_with_8bitmime(deliverer, postfix_sink) -> None:
    sink = postfix_sink("127.0.0.71", free_port(["127.0.0.71"]))
    message = "From: alice@sender.test\r\nSubject: umlauts\r\n\r\nGrüße\r\n".encode()
    results = await deliverer.deliver(
        HostsTarget((("127.0.0.71", sink.port),)), "alice@sender.test", ["bob@pf.mailfleet.test"], message
    )
    assert results["bob@pf.mailfleet.test"].ok
    [received] = sink.messages()
    assert "BODY=8BITMIME" in received["X-Mail-Args"]
    assert received["Content-Transfer-Encoding"] is None
    assert "Grüße".encode() in sink.dump_dir.joinpath(next(iter(sink.dump_dir.iterdir())).name).read_bytes()
