"""Retries on the route's schedule and bounces as RFC 3464 DSNs (the queue commands: tests/cli/test_queue.py)."""

from __future__ import annotations

import email
import json
import smtplib
import time
from email.message import Message

from peers.named import free_port
from peers.smtp_client import send
from peers.smtp_sink import start_refusing_server

from appliance.queue.runner import next_delay


def test_schedule_last_interval_repeats() -> None:
    schedule = (600.0, 600.0, 600.0, 86400.0)
    assert [next_delay(schedule, n) for n in range(1, 7)] == [600, 600, 600, 86400, 86400, 86400]


def test_backup_mx_retries_until_primary_comes_up(mailfleet_factory, smtp_sink) -> None:
    port = free_port(["127.0.0.1"])
    refusing = start_refusing_server("127.0.0.1", port, "421 4.3.2 primary is down for maintenance")
    server = mailfleet_factory({
        "roles": ["backup_mx"],
        "backup_mx": {"retry_schedule": ["1s", "2s"],
                      "domains": {"example.test": {"primary_hosts": [f"127.0.0.1:{port}"], "verify": "none"}}},
    })
    try:
        queue_id = send(server.smtp_port, "someone@outside.test", ["alice@example.test"], "held")
        server.wait_for(lambda: refusing.connections >= 3, timeout=15, what="three attempts at the primary")
        times = list(refusing.times)
    finally:
        refusing.stop()
    # Waits between attempts follow the schedule: 1s, then 2s, then 2s again (the last interval repeats).
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    listing = json.loads(server.cli("queue", "list", "--json").stdout)
    assert [m["id"] for m in listing] == [queue_id]
    rcpt = listing[0]["recipients"][0]
    assert rcpt["status"] == "pending" and rcpt["attempts"] >= 3
    assert "primary is down for maintenance" in rcpt["last"]
    primary = smtp_sink(port=port)
    server.wait_for(lambda: len(primary.messages) == 1, timeout=15, what="delivery once the primary is up")
    assert primary.messages[0].rcpt_tos == ("alice@example.test",)
    assert primary.messages[0].mail_from == "someone@outside.test"
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")


def _dsn_parts(raw: bytes) -> tuple[Message, list[Message]]:
    message = email.message_from_bytes(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    return message, message.get_payload()


def primary_and_gateway(sink_port: int, lifetime: str = "5d") -> dict:
    return {
        "roles": ["primary", "incoming_gateway"],
        "queue": {"retry_schedule": ["1s"], "lifetime": lifetime},
        "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
        "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{sink_port}"], "verify": "none"}}},
    }


def test_5xx_bounces_at_once_with_a_dsn(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink(rcpt_replies={"gone@fwd.test": "550 5.1.1 mailbox gone"})
    server = mailfleet_factory(primary_and_gateway(sink.port))
    queue_id = send(server.smtp_port, "alice@home.test", ["gone@fwd.test", "here@fwd.test"], "partly")
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, what="the bounce in alice's INBOX")
    assert len(sink.messages) == 1 and sink.messages[0].rcpt_tos == ("here@fwd.test",)
    raw = server.mailbox_files("alice@home.test")[0].read_bytes()
    assert b"Return-Path: <>" in raw  # RFC 3464: DSNs travel with the null sender
    report, parts = _dsn_parts(raw.split(b"\r\n", 2)[2])
    assert queue_id in report.as_string() or "partly" in report.as_string()
    status = parts[1].get_payload()
    fields = "\n".join(str(block) for block in status)
    assert "Final-Recipient: rfc822; gone@fwd.test" in fields
    assert "Action: failed" in fields and "Status: 5.1.1" in fields
    assert "mailbox gone" in fields
    assert "here@fwd.test" not in fields
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "Subject: partly" in parts[2].get_payload()
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")


def test_the_dsn_names_the_enhanced_code_once(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink(rcpt_replies={"gone@fwd.test": "550 5.1.1 sink refuses this recipient"})
    server = mailfleet_factory(primary_and_gateway(sink.port))
    send(server.smtp_port, "alice@home.test", ["gone@fwd.test"], "once")
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, what="the bounce in alice's INBOX")
    _, parts = _dsn_parts(server.mailbox_files("alice@home.test")[0].read_bytes().split(b"\r\n", 2)[2])
    block = parts[1].get_payload()[1]
    assert block["Diagnostic-Code"].strip() == "smtp; 550 5.1.1 sink refuses this recipient"
    assert block["Status"] == "5.1.1"
    assert "<gone@fwd.test>: 550 5.1.1 sink refuses this recipient (from" in parts[0].get_payload(decode=True).decode()


def test_a_failure_recorded_before_a_crash_is_still_bounced(mailfleet_factory) -> None:
    import asyncio

    from appliance.message.model import FAILED, QueuedMessage, Recipient, new_queue_id
    from appliance.queue.spool import Spool

    server = mailfleet_factory(primary_and_gateway(free_port(["127.0.0.1"])))
    server.stop()
    # What a crash between recording a 5xx and sending the DSN leaves behind.
    spool = Spool(server.data_dir / "spool")
    rcpt = Recipient(address="gone@fwd.test", original="gone@fwd.test")
    message = QueuedMessage(queue_id=new_queue_id(), mail_from="alice@home.test", recipients=[rcpt],
                            arrival=time.time(), client="127.0.0.1")
    asyncio.run(spool.commit(message, b"Subject: before the crash\r\n\r\nx\r\n"))
    rcpt.status, rcpt.attempts, rcpt.last_code, rcpt.last_text = FAILED, 1, 550, "5.1.1 mailbox gone"
    spool.record(message, [rcpt])
    spool.close()

    server.start()
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, what="the bounce after the restart")
    raw = server.mailbox_files("alice@home.test")[0].read_bytes()
    assert b"Final-Recipient: rfc822; gone@fwd.test" in raw and b"Status: 5.1.1" in raw
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")


def test_a_recipient_delivered_before_a_crash_is_not_delivered_again(mailfleet_factory, smtp_sink) -> None:
    """One recipient delivered, the other deferred, then kill -9: after the restart only the deferred one is
    tried again; once it is delivered too the message leaves the spool and, after another kill and restart,
    nobody receives it twice."""
    first = smtp_sink()
    second_port = free_port(["127.0.0.1"])
    server = mailfleet_factory({
        "roles": ["incoming_gateway"],
        "queue": {"retry_schedule": ["1s"]},
        "incoming_gateway": {"domains": {"one.test": {"destinations": [f"127.0.0.1:{first.port}"], "verify": "none"},
                                         "two.test": {"destinations": [f"127.0.0.1:{second_port}"], "verify": "none"}}},
    })
    queue_id = send(server.smtp_port, "someone@outside.test", ["a@one.test", "b@two.test"], "twice")
    server.wait_for(lambda: "rcpt=b@two.test" in server.log() and len(first.messages) == 1,
                    what="the first attempt: one delivered, one deferred")
    server.kill()
    assert server.queue_ids() == [queue_id]
    server.start()
    second = smtp_sink(port=second_port)
    server.wait_for(lambda: len(second.messages) == 1, what="the deferred recipient after the restart")
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")
    server.kill()
    server.start()
    # The one sleep kept: the absence of a retry is the thing under test, and a retry comes only after the
    # 1 s interval has passed.
    time.sleep(1.5)
    assert [m.rcpt_tos for m in first.messages] == [("a@one.test",)]
    assert [m.rcpt_tos for m in second.messages] == [("b@two.test",)]
    assert not list((server.data_dir / "spool" / "state").iterdir())


def test_queue_lifetime_expiry_bounces_with_4_4_7(mailfleet_factory) -> None:
    dead = free_port(["127.0.0.1"])
    server = mailfleet_factory(primary_and_gateway(dead, lifetime="3s"))
    send(server.smtp_port, "alice@home.test", ["nobody@fwd.test"], "expires")
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, timeout=20,
                    what="the expiry bounce")
    raw = server.mailbox_files("alice@home.test")[0].read_bytes()
    assert b"Status: 4.4.7" in raw and b"Action: failed" in raw
    assert b"gave up after" in raw


def test_null_sender_failure_makes_no_bounce(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink(rcpt_replies={"gone@fwd.test": "550 5.1.1 mailbox gone"})
    server = mailfleet_factory(primary_and_gateway(sink.port))
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.sendmail("", ["gone@fwd.test"], b"Subject: a bounce itself\r\n\r\nx\r\n")
    server.wait_for(lambda: "null sender, no bounce" in server.log(), what="the failure to be logged")
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")
    assert server.mailbox_files("alice@home.test") == []
