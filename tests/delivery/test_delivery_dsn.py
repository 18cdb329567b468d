"""RFC 3464 DSNs, checked by parsing the result back with the email package as a mail client would."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage

import pytest

from appliance.delivery.client import RcptResult
from appliance.delivery.dsn import build_dsn

ORIGINAL = (
    b"From: Alice <alice@sender.test>\r\nTo: bob@dest.test\r\nSubject: Quarterly numbers\r\n"
    b"Message-ID: <orig-1@sender.test>\r\n\r\nThe secret body.\r\n"
)
REFUSED = RcptResult(550, "5.1.1", "No such user here", "mx1.dest.test[127.0.0.31]")
UNREACHABLE = RcptResult(421, "4.4.1", "connect to mx1.dest.test[127.0.0.31]:25: Connection refused", None)


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def status_blocks(dsn: EmailMessage) -> list:
    report = dsn.get_payload()[1]
    assert report.get_content_type() == "message/delivery-status"
    return report.get_payload()


def test_bounce_structure_and_fields() -> None:
    arrival = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    raw = build_dsn(
        "mx.mailfleet.test",
        "alice@sender.test",
        ORIGINAL,
        [("bob@dest.test", REFUSED), ("carol@dest.test", UNREACHABLE)],
        arrival=arrival,
        queue_id="Q42",
    )
    dsn = parse(raw)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["To"] == "alice@sender.test"
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@mx.mailfleet.test>"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    parts = dsn.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]

    human = parts[0].get_content()
    assert "<bob@dest.test>: 550 5.1.1 No such user here" in human
    assert "<carol@dest.test>: 421 4.4.1 connect to" in human

    per_message, bob, carol = status_blocks(dsn)
    assert per_message["Reporting-MTA"] == "dns; mx.mailfleet.test"
    assert per_message["Arrival-Date"] == "Wed, 25 Nov 2026 10:00:00 +0000"
    assert per_message["X-Mailfleet-Queue-ID"] == "Q42"
    assert bob["Final-Recipient"] == "rfc822; bob@dest.test"
    assert bob["Action"] == "failed" and bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.dest.test"
    assert bob["Diagnostic-Code"].strip() == "smtp; 550 5.1.1 No such user here"
    assert carol["Status"] == "4.4.1" and carol["Remote-MTA"] is None
    assert carol["Diagnostic-Code"].strip().startswith("X-Mailfleet; connect to mx1.dest.test")


def test_original_headers_without_the_body() -> None:
    dsn = parse(build_dsn("mx.mailfleet.test", "alice@sender.test", ORIGINAL, [("bob@dest.test", REFUSED)]))
    headers = dsn.get_payload()[2].get_payload(decode=True)
    assert b"Subject: Quarterly numbers" in headers and b"Message-ID: <orig-1@sender.test>" in headers
    assert b"secret body" not in headers
    assert b"secret body" not in dsn.as_bytes()


def test_delay_warning() -> None:
    last = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    until = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    raw = build_dsn(
        "mx.mailfleet.test",
        "alice@sender.test",
        ORIGINAL,
        [("carol@dest.test", UNREACHABLE)],
        action="delayed",
        last_attempt=last,
        will_retry_until=until,
    )
    dsn = parse(raw)
    assert dsn["Subject"].startswith("Delayed Mail")
    block = status_blocks(dsn)[1]
    assert block["Action"] == "delayed" and block["Status"] == "4.4.1"
    assert block["Last-Attempt-Date"] == "Wed, 25 Nov 2026 11:00:00 +0000"
    assert block["Will-Retry-Until"] == "Mon, 30 Nov 2026 10:00:00 +0000"
    assert "will keep" in dsn.get_payload()[0].get_content()


def test_hostile_remote_text_cannot_inject_fields() -> None:
    hostile = RcptResult(550, "5.7.1", "go away\r\nAction: delivered\r\nStatus: 2.0.0", "mx.evil.test")
    dsn = parse(build_dsn("mx.mailfleet.test", "alice@sender.test", ORIGINAL, [("bob@dest.test", hostile)]))
    block = status_blocks(dsn)[1]
    assert block.get_all("Action") == ["failed"] and block.get_all("Status") == ["5.7.1"]
    assert block["Diagnostic-Code"].strip() == "smtp; 550 5.7.1 go away Action: delivered Status: 2.0.0"


def test_ascii_sender_gets_an_ascii_dsn() -> None:
    result = RcptResult(553, "5.6.7", "no SMTPUTF8", "mx1.dest.test")
    raw = build_dsn("mx.mailfleet.test", "alice@sender.test", ORIGINAL, [("jörg@dest.test", result)])
    assert raw.isascii()  # goes to any peer, with or without SMTPUTF8


def test_utf8_recipient_and_headers() -> None:
    original = "From: René <rené@sender.test>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    result = RcptResult(553, "5.6.7", "mx1.dest.test does not support SMTPUTF8", "mx1.dest.test")
    raw = build_dsn("mx.mailfleet.test", "rené@sender.test", original, [("jörg@dest.test", result)])
    dsn = parse(raw)
    assert dsn["To"] == "rené@sender.test"
    assert status_blocks(dsn)[1]["Final-Recipient"] == "utf-8; j\\x{F6}rg@dest.test"
    assert "Subject: Grüße" in dsn.get_payload()[2].get_payload(decode=True).decode()


def test_no_dsn_for_the_null_sender() -> None:
    with pytest.raises(ValueError, match="null sender"):
        build_dsn("mx.mailfleet.test", "", ORIGINAL, [("bob@dest.test", REFUSED)])


def test_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        build_dsn("mx.mailfleet.test", "alice@sender.test", ORIGINAL, [("bob@dest.test", REFUSED)], action="lost")


def test_template_syntax_from_a_message_is_printed_not_run() -> None:
    """The text part comes from a Jinja2 template; a remote reply or an address that looks like template
    syntax is text in it, never code."""
    hostile = RcptResult(550, "5.7.1", "{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %} {# gone #}", "mx.evil.test")
    raw = build_dsn("mx.mailfleet.test", "alice@sender.test", ORIGINAL, [("{{config}}@dest.test", hostile)])
    human = parse(raw).get_payload()[0].get_content()
    assert "<{{config}}@dest.test>: 550 5.7.1 {{ 7 * 7 }} {% for x in range(3) %}x{% endfor %} {# gone #}" in human
    assert "49" not in human


def test_a_message_lost_in_the_queue_is_reported_without_its_headers() -> None:
    """A spool file found damaged (the envelope readable, the data not): the DSN says so and returns no header
    section (RFC 3462 §3 makes the third part optional)."""
    lost = RcptResult(550, "5.3.0", "the queued message was found damaged on disk", None)
    dsn = parse(build_dsn("mx.mailfleet.test", "alice@sender.test", None, [("bob@dest.test", lost)], queue_id="Q9"))
    parts = dsn.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status"]
    human = parts[0].get_content()
    assert "found damaged in this system's queue" in human and "please send it again" in human
    assert "attached below" not in human
    block = status_blocks(dsn)[1]
    assert block["Action"] == "failed" and block["Status"] == "5.3.0"
    assert block["Diagnostic-Code"].strip() == "X-Mailfleet; the queued message was found damaged on disk"


def test_the_template_ships_inside_the_package() -> None:
    """Read as package data (what a wheel install has), not from the source tree's path."""
    from importlib.resources import files

    template = files("appliance.delivery").joinpath("templates", "dsn.txt.j2")
    assert "reporting_mta" in template.read_text()
