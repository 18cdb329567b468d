"""The milter client against real milters: a scripted one on libmilter (pymilter), OpenDKIM, and hostile ones.

The pipeline's checks get the SMTP engine's own Session and Envelope objects, stage by stage, as the handler
gives them; the DATA scan gets a ScanRequest as the filter engine builds it. What is asserted is what an
administrator would see: the replies, the changes to the message, what the milter was told.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from dataclasses import replace

import aiosmtplib
import dkim
import pytest
from peers.milter import MilterProcess, OpenDKIM, RawMilter
from peers.named import free_port
from waits import wait_until

from appliance.config.model import HostPort, ScannerConfig, UnixSocket
from appliance.filters import scanner
from appliance.filters.milter import Milter, codec
from appliance.filters.milter.client import OFFERED_ACTIONS, OFFERED_PROTOCOL
from appliance.filters.scanner import Action, ScanError, ScanRequest, Verdict
from appliance.message.address import parse_mailbox
from appliance.message.model import QueuedMessage
from appliance.pipeline.intake import Intake
from appliance.pipeline.stages import MailFrom, Outcome, Pipeline, RcptTo, Result, Stage, refuse
from appliance.smtp.protocol import Envelope, Session, SMTPServerProtocol
from appliance.smtp.server import InboundHandler, ListenerOptions, SessionCounter

HOSTNAME = "mx.example.test"
MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@other.test\r\nSubject: greetings\r\n"
           b"X-Folded: first line\r\n\tsecond line\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@example.test>\r\n\r\nHello Bob.\r\n")


def _config(address: HostPort | UnixSocket, **overrides: object) -> ScannerConfig:
    return replace(ScannerConfig(type="milter", address=address, name="scripted", timeout=10), **overrides)


class Conversation:
    """One SMTP connection's stages as smtp.server's handler runs them, with the engine's own objects."""

    def __init__(self, milter: Milter, port: int = 40000) -> None:
        self.milter = milter
        self.pipeline = Pipeline()
        milter.register(self.pipeline)
        self.session = Session(("127.0.0.1", port), None)
        self.envelope = Envelope()

    async def run(self, stage: Stage, argument: object) -> Result | None:
        transaction = self.envelope if stage in (Stage.MAIL, Stage.RCPT) else None
        outcome: Outcome = self.pipeline.run(stage, self.session, transaction, argument)
        if outcome is not None and not isinstance(outcome, Result):
            outcome = await outcome
        return outcome

    async def connect(self) -> Result | None:
        return await self.run(Stage.CONNECT, None)

    async def helo(self, name: str = "client.test") -> Result | None:
        result = await self.run(Stage.HELO, name)
        if result is None:
            self.session.host_name = name
            self.envelope = Envelope()  # HELO resets the transaction
        return result

    async def mail(self, sender: str = "alice@example.test", size: int = 0) -> Result | None:
        result = await self.run(Stage.MAIL, MailFrom(sender, size))
        if result is None:
            self.envelope.mail_from = sender or "<>"
        return result

    async def rcpt(self, address: str) -> Result | None:
        result = await self.run(Stage.RCPT, RcptTo(address, parse_mailbox(address), (address,)))
        if result is None:
            self.envelope.rcpt_tos.append(address)
            self.envelope.accepted.append((address, (address,)))
        return result

    async def envelope_of(self, *recipients: str) -> None:
        assert await self.connect() is None
        assert await self.helo() is None
        assert await self.mail() is None
        for recipient in recipients:
            assert await self.rcpt(recipient) is None

    async def data(self, content: bytes = MESSAGE, queue_id: str = "") -> Verdict:
        self.envelope.content = content
        verdict = await self.milter.scan(ScanRequest(self.session, self.envelope, content, HOSTNAME, queue_id,
                                                     tuple(self.envelope.rcpt_tos)))
        self.envelope = Envelope()  # the end of DATA resets the transaction
        return verdict

    def rset(self) -> None:
        self.envelope = Envelope()

    def close(self) -> None:
        self.pipeline.closed(self.session)


def _milter(process: MilterProcess | RawMilter | HostPort, **overrides: object) -> Milter:
    address = process if isinstance(process, HostPort) else process.address
    return Milter(_config(address, **overrides), HOSTNAME)


def _events(milter: MilterProcess, name: str) -> list[dict]:
    return [event for event in milter.events() if event["event"] == name]


# -- replies before DATA ----------------------------------------------------------------------------------------

async def test_a_refusal_at_rcpt_refuses_that_recipient_alone_with_the_milters_own_lines(scripted_milter) -> None:
    process = scripted_milter({"on": {"envrcpt": [
        {"match": "nobody@", "result": "reject", "reply": ["550", "5.1.1", "no such user", "ask the postmaster"]},
        {"match": "later@", "result": "tempfail"}]}})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    refusal = await conversation.rcpt("nobody@other.test")
    assert refusal is not None and refusal.action.value == "refuse"
    assert refusal.reply == "550-5.1.1 no such user\r\n550 5.1.1 ask the postmaster"
    later = await conversation.rcpt("later@other.test")
    assert later is not None and later.reply == "451 4.7.1 Service unavailable - try again later"
    assert await conversation.rcpt("carol@other.test") is None  # the transaction goes on
    verdict = await conversation.data()
    assert verdict == Verdict("scripted")
    conversation.close()
    events = process.wait_for("close")
    assert [event["args"][0] for event in events if event["event"] == "envrcpt"] == [
        "<bob@other.test>", "<nobody@other.test>", "<later@other.test>", "<carol@other.test>"]
    assert "eom" in [event["event"] for event in events]


async def test_a_refusal_at_mail_refuses_that_sender_and_the_next_one_is_asked(scripted_milter) -> None:
    process = scripted_milter({"on": {"envfrom": [{"match": "spammer@", "result": "reject"},
                                                  {"match": "busy@", "result": "tempfail"}]}})
    conversation = Conversation(_milter(process))
    assert await conversation.connect() is None and await conversation.helo() is None
    rejected = await conversation.mail("spammer@example.test")
    assert rejected is not None and rejected.reply == "550 5.7.1 Command rejected"
    busy = await conversation.mail("busy@example.test")
    assert busy is not None and busy.reply == "451 4.7.1 Service unavailable - try again later"
    assert await conversation.mail("alice@example.test") is None
    assert await conversation.rcpt("bob@other.test") is None
    conversation.close()
    # A refused MAIL opened no transaction to abort; the one open when the connection ends is aborted.
    process.wait_for("close")
    assert process.names() == [
        "negotiate", "connect", "hello", "envfrom", "envfrom", "envfrom", "envrcpt", "abort", "close"]


async def test_a_refusal_at_connect_holds_for_the_whole_connection(scripted_milter) -> None:
    process = scripted_milter({"on": {"connect": {"result": "reject", "reply": ["554", "5.7.1", "go away"]}}})
    conversation = Conversation(_milter(process))
    refusal = await conversation.connect()
    assert refusal is not None and refusal.reply == "554 5.7.1 go away"
    again = await conversation.helo()
    assert again is not None and again.reply == "554 5.7.1 go away"
    process.wait_for("close")  # the milter is done with this connection
    assert process.names() == ["negotiate", "connect", "close"]


async def test_an_accept_at_connect_means_the_milter_is_asked_nothing_more(scripted_milter) -> None:
    process = scripted_milter({"on": {"connect": {"result": "accept"}}})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    assert await conversation.data() == Verdict("scripted")
    process.wait_for("close")
    assert process.names() == ["negotiate", "connect", "close"]


async def test_an_accept_at_rcpt_ends_the_questions_about_that_message_only(scripted_milter) -> None:
    process = scripted_milter({"on": {"envrcpt": {"match": "trusted@", "result": "accept"},
                                      "eom": {"do": [["addheader", "X-Checked", "yes"]]}}})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("trusted@other.test", "bob@other.test")
    assert await conversation.data() == Verdict("scripted")
    assert await conversation.mail() is None and await conversation.rcpt("bob@other.test") is None
    second = await conversation.data()
    assert second.changes == (scanner.AddHeader("X-Checked", "yes"),)
    assert process.names().count("envrcpt") == 2  # the message after trusted@ was not asked about further


# -- the end of the message ---------------------------------------------------------------------------------

async def test_every_modification_arrives_as_its_change(scripted_milter) -> None:
    process = scripted_milter({"on": {"eom": {"progress": 2, "do": [
        ["addheader", "X-Spam-Flag", "YES"],
        ["insheader", 0, "X-Top", "first"],
        ["chgheader", "Subject", 1, "[SPAM] greetings"],
        ["chgheader", "X-Folded", 1, ""],
        ["replacebody", "New body,\nin two lines.\n"],
        ["chgfrom", "<bounces@example.test>", "SIZE=1000"],
        ["addrcpt", "<archive@example.test>"],
        ["addrcpt", "<copy@example.test>", "NOTIFY=NEVER"],
        ["delrcpt", "<bob@other.test>"],
    ]}}})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    verdict = await conversation.data()
    assert verdict.action is Action.NONE
    assert verdict.changes == (
        scanner.AddHeader("X-Spam-Flag", "YES"),
        scanner.InsertHeader(0, "X-Top", "first"),
        scanner.ChangeHeader("Subject", 1, "[SPAM] greetings"),
        scanner.ChangeHeader("X-Folded", 1, ""),  # a deletion
        scanner.ReplaceBody(b"New body,\r\nin two lines.\r\n"),
        scanner.ChangeSender("bounces@example.test", "SIZE=1000"),
        scanner.AddRecipient("archive@example.test"),
        scanner.AddRecipient("copy@example.test", "NOTIFY=NEVER"),
        scanner.DeleteRecipient("bob@other.test"),
    )


async def test_a_quarantine_and_a_discard_hold_the_message(scripted_milter) -> None:
    quarantining = scripted_milter({"on": {"eom": {"do": [["quarantine", "looks like phishing"]]}}})
    conversation = Conversation(_milter(quarantining))
    await conversation.envelope_of("bob@other.test")
    held = await conversation.data()
    assert (held.action, held.detail) == (Action.QUARANTINE, "looks like phishing")

    discarding = scripted_milter({"on": {"eom": {"result": "discard"}}})
    conversation = Conversation(_milter(discarding))
    await conversation.envelope_of("bob@other.test")
    dropped = await conversation.data()
    assert (dropped.action, dropped.detail) == (Action.QUARANTINE, "milter discard")


async def test_a_discard_at_rcpt_quarantines_the_message_without_sending_it(scripted_milter) -> None:
    process = scripted_milter({"on": {"envrcpt": {"result": "discard"}}})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    verdict = await conversation.data()
    assert (verdict.action, verdict.detail) == (Action.QUARANTINE, "milter discard")
    assert "header" not in process.names() and "eom" not in process.names()


async def test_refusals_at_the_end_of_the_message_carry_their_reply(scripted_milter) -> None:
    rejecting = scripted_milter({"on": {"eom": {"result": "reject"}}})
    conversation = Conversation(_milter(rejecting))
    await conversation.envelope_of("bob@other.test")
    rejected = await conversation.data()
    assert (rejected.action, rejected.reply) == (Action.REJECT, "550 5.7.1 Command rejected")

    deferring = scripted_milter({"on": {"eom": {"result": "tempfail",
                                                "reply": ["452", "4.3.1", "mailbox busy", "try again soon"]}}})
    conversation = Conversation(_milter(deferring))
    await conversation.envelope_of("bob@other.test")
    deferred = await conversation.data()
    assert deferred.action is Action.SOFT_REJECT
    assert deferred.reply == "452-4.3.1 mailbox busy\r\n452 4.3.1 try again soon"


async def test_a_reject_at_a_header_stops_the_message_there(scripted_milter) -> None:
    process = scripted_milter({"on": {"header": {"match": "Subject", "result": "reject"}}})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    verdict = await conversation.data()
    assert verdict.action is Action.REJECT
    assert [event["args"][0] for event in _events(process, "header")] == ["From", "To", "Subject"]
    assert "eom" not in process.names()
    # The connection goes on: the next message is asked about in full.
    assert await conversation.mail() is None and await conversation.rcpt("bob@other.test") is None
    assert (await conversation.data(b"From: alice@example.test\r\n\r\nHi.\r\n")).action is Action.NONE
    assert process.names()[-1] == "eom"


# -- what the milter is told -----------------------------------------------------------------------------------

async def test_the_negotiation_offers_every_action_and_step_of_version_6(scripted_milter) -> None:
    process = scripted_milter()
    conversation = Conversation(_milter(process))
    await conversation.connect()
    [negotiate] = _events(process, "negotiate")
    assert negotiate["args"][:2] == [int(OFFERED_ACTIONS), int(OFFERED_PROTOCOL)]
    assert OFFERED_ACTIONS == 0x1FF  # SMFIF_ADDHDRS .. SMFIF_SETSYMLIST


async def test_the_message_reaches_the_milter_as_postfix_sends_it(scripted_milter) -> None:
    process = scripted_milter()
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    await conversation.data()
    headers = [tuple(event["args"]) for event in _events(process, "header")]
    assert headers[:4] == [("From", "Alice <alice@example.test>"), ("To", "bob@other.test"),
                           ("Subject", "greetings"), ("X-Folded", "first line\n\tsecond line")]
    assert [event["args"] for event in _events(process, "body")] == [["Hello Bob.\r\n"]]
    connect = _events(process, "connect")[0]
    assert connect["args"] == ["[127.0.0.1]", "2", ["127.0.0.1", 40000]]  # AF_INET, the client's port
    assert _events(process, "hello")[0]["args"] == ["client.test"]
    assert _events(process, "envfrom")[0]["args"] == ["<alice@example.test>"]


async def test_header_values_keep_their_leading_space_when_the_milter_asks(scripted_milter) -> None:
    process = scripted_milter({"protocol": ["HDR_LEADSPC"]})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    await conversation.data()
    assert _events(process, "header")[2]["args"] == ["Subject", " greetings"]


async def test_the_default_macros_are_postfixs(scripted_milter) -> None:
    process = scripted_milter()
    conversation = Conversation(_milter(process))
    conversation.session.login = "alice"
    await conversation.envelope_of("bob@other.test")
    await conversation.data(queue_id="4Xq2Z")
    connect = _events(process, "connect")[0]["macros"]
    assert connect == {"j": HOSTNAME, "{daemon_name}": HOSTNAME, "v": connect["v"], "_": "unknown [127.0.0.1]"}
    assert connect["v"].startswith("Mailfleet")
    envfrom = _events(process, "envfrom")[0]["macros"]
    assert envfrom["{mail_addr}"] == "alice@example.test" and envfrom["{auth_authen}"] == "alice"
    assert "{client_addr}" not in envfrom  # not in Postfix's default lists
    assert _events(process, "envrcpt")[0]["macros"]["{rcpt_addr}"] == "bob@other.test"
    assert _events(process, "eom")[0]["macros"]["i"] == "4Xq2Z"


async def test_the_macros_a_milter_asks_for_are_sent_at_its_stages(scripted_milter) -> None:
    process = scripted_milter({"symlist": {"connect": ["{client_addr}", "{client_port}"],
                                           "envfrom": ["{mail_addr}"]}})
    conversation = Conversation(_milter(process))
    conversation.session.login = "alice"
    await conversation.envelope_of("bob@other.test")
    connect = _events(process, "connect")[0]["macros"]
    assert connect == {"{client_addr}": "127.0.0.1", "{client_port}": "40000"}  # its list replaces the default
    envfrom = _events(process, "envfrom")[0]["macros"]
    assert envfrom["{mail_addr}"] == "alice@example.test"
    assert "{auth_authen}" not in envfrom  # in Postfix's default MAIL list, not in the milter's
    assert _events(process, "envrcpt")[0]["macros"]["{rcpt_addr}"] == "bob@other.test"  # default list kept


async def test_steps_the_milter_leaves_out_or_does_not_answer(scripted_milter) -> None:
    process = scripted_milter({
        "protocol": ["NOCONNECT", "NOHELO", "NOHDRS", "NR_MAIL", "NR_RCPT", "NR_DATA", "NR_EOH", "NR_BODY"],
        "on": {"eom": {"do": [["addheader", "X-Seen", "yes"]]}}})
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test", "carol@other.test")
    verdict = await conversation.data()
    assert verdict.changes == (scanner.AddHeader("X-Seen", "yes"),)
    assert process.names() == ["negotiate", "envfrom", "envrcpt", "envrcpt", "data", "eoh", "body", "eom"]
    # The macros of a step left out still arrive (as Postfix sends them): the connect macros were there.
    assert _events(process, "envfrom")[0]["macros"]["j"] == HOSTNAME


async def test_a_skip_ends_the_body_and_long_bodies_go_in_chunks(scripted_milter) -> None:
    body = b"".join(b"line %06d of a long body\r\n" % n for n in range(10_000))  # 270 kB
    reading = scripted_milter()
    conversation = Conversation(_milter(reading))
    await conversation.envelope_of("bob@other.test")
    await conversation.data(b"Subject: long\r\n\r\n" + body)
    chunks = [event["args"][0].encode() for event in _events(reading, "body")]
    assert [len(chunk) for chunk in chunks] == [65535] * 4 + [len(body) - 4 * 65535]
    assert b"".join(chunks) == body

    skipping = scripted_milter({"on": {"body": {"result": "skip"}, "eom": {"do": [["addheader", "X-A", "b"]]}}})
    conversation = Conversation(_milter(skipping))
    await conversation.envelope_of("bob@other.test")
    verdict = await conversation.data(b"Subject: long\r\n\r\n" + body)
    assert verdict.changes == (scanner.AddHeader("X-A", "b"),)
    assert skipping.names()[-2:] == ["body", "eom"]  # one chunk, then the end of the message


async def test_a_milter_on_a_unix_socket(scripted_milter) -> None:
    process = scripted_milter({"on": {"eom": {"do": [["addheader", "X-Via", "unix"]]}}}, unix=True)
    assert isinstance(process.address, UnixSocket)
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    assert (await conversation.data()).changes == (scanner.AddHeader("X-Via", "unix"),)
    assert _events(process, "connect")[0]["args"][1] == "2"  # the SMTP client's family, not the socket's


async def test_a_milter_first_asked_at_data_hears_the_envelope_first(scripted_milter) -> None:
    process = scripted_milter({"on": {"envrcpt": {"match": "nobody@", "result": "reject"}}})
    milter = _milter(process)
    session = Session(("127.0.0.1", 40001), None)
    session.host_name = "client.test"
    envelope = Envelope()
    envelope.mail_from = "alice@example.test"
    envelope.rcpt_tos = ["bob@other.test", "nobody@other.test"]
    verdict = await milter.scan(ScanRequest(session, envelope, MESSAGE, HOSTNAME,
                                            recipients=tuple(envelope.rcpt_tos)))
    assert verdict.changes == (scanner.DeleteRecipient("nobody@other.test"),)
    assert process.names()[:6] == ["negotiate", "connect", "hello", "envfrom", "envrcpt", "envrcpt"]


# -- transactions and the connection's end ---------------------------------------------------------------------

async def test_a_reset_transaction_is_aborted_before_the_next_mail(scripted_milter) -> None:
    process = scripted_milter()
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    conversation.rset()
    assert await conversation.mail() is None
    process.wait_for("abort")
    assert process.names() == ["negotiate", "connect", "hello", "envfrom", "envrcpt", "abort", "envfrom"]
    assert await conversation.rcpt("bob@other.test") is None
    await conversation.data()
    assert await conversation.mail() is None  # after a whole message there is nothing to abort
    assert process.names().count("abort") == 1
    conversation.close()
    process.wait_for("close")


async def test_quit_when_the_smtp_connection_closes(raw_milter, scripted_milter) -> None:
    raw = raw_milter([NEGOTIATED, CONTINUED, CONTINUED, CONTINUED])
    conversation = Conversation(_milter(raw))
    assert await conversation.connect() is None
    assert await conversation.helo() is None
    assert await conversation.mail() is None
    conversation.close()
    wait_until(lambda: raw.received[-1:] == [b"Q"], what="QUIT at the milter")  # the letter of each packet read
    assert raw.received == [b"O", b"D", b"C", b"H", b"D", b"M", b"A", b"Q"]  # the open transaction aborted first

    process = scripted_milter()
    conversation = Conversation(_milter(process))
    await conversation.envelope_of("bob@other.test")
    await conversation.data()
    conversation.close()
    assert process.wait_for("close")[-1]["event"] == "close"


async def test_a_session_started_afresh_closes_the_milter_connection_of_before(scripted_milter) -> None:
    """STARTTLS gives the SMTP session a new Session object: the milter connection opened before it is closed,
    and the session after it gets its own, as a new connection."""
    process = scripted_milter()
    milter = _milter(process)
    before = Conversation(milter, port=40002)
    assert await before.connect() is None and await before.helo() is None
    after = Conversation(milter, port=40002)
    after.pipeline = before.pipeline
    assert await after.helo("client.test") is None
    process.wait_for("close")
    names = process.names()
    assert names[:3] == ["negotiate", "connect", "hello"]
    # the two milter connections' threads record concurrently: the order after the first three is theirs
    assert sorted(names[3:]) == ["close", "connect", "hello", "negotiate"]


# -- a milter that is down, hangs or breaks the protocol ----------------------------------------------------

@pytest.fixture
def nobody_listening() -> HostPort:
    return HostPort("127.0.0.1", free_port(["127.0.0.1"]))


async def test_a_milter_that_is_down_tempfails_the_connection(nobody_listening: HostPort, caplog) -> None:
    conversation = Conversation(_milter(nobody_listening))
    with caplog.at_level(logging.WARNING, "appliance.filters"):
        refusal = await conversation.connect()
    assert refusal is not None and refusal.reply == "451 4.7.1 Milter scripted unavailable, try again later"
    later = await conversation.mail()
    assert later is not None and later.reply == refusal.reply
    [record] = [r for r in caplog.records if r.name == "appliance.filters"]
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert f"milter scripted ({nobody_listening})" in record.getMessage()
    assert "Connection refused" in record.getMessage()


async def test_a_milter_that_is_down_is_left_out_when_on_error_accepts(nobody_listening: HostPort) -> None:
    conversation = Conversation(_milter(nobody_listening, on_error="accept"))
    await conversation.envelope_of("bob@other.test")
    verdict = await conversation.data()
    assert verdict.skipped is not None and verdict.skipped.startswith("milter unavailable")
    assert verdict.action is Action.NONE and verdict.changes == ()


async def test_a_milter_that_hangs_times_out(scripted_milter) -> None:
    process = scripted_milter({"on": {"envfrom": {"result": "hang"}}})
    conversation = Conversation(_milter(process, timeout=0.5))
    assert await conversation.connect() is None and await conversation.helo() is None
    refusal = await conversation.mail()
    assert refusal is not None and refusal.reply == "451 4.7.1 Milter scripted unavailable, try again later"

    accepting = Conversation(_milter(process, timeout=0.5, on_error="accept"), port=40003)
    await accepting.envelope_of("bob@other.test")
    verdict = await accepting.data()
    assert verdict.skipped is not None and "no answer within 0.5s" in verdict.skipped


async def test_a_milter_that_hangs_at_the_end_of_the_message_is_a_scan_error(scripted_milter) -> None:
    process = scripted_milter({"on": {"eom": {"result": "hang"}}})
    conversation = Conversation(_milter(process, timeout=0.5))
    await conversation.envelope_of("bob@other.test")
    with pytest.raises(ScanError, match="no answer within 0.5s"):
        await conversation.data()
    # The milter connection is out of step now: the rest of the connection gets on_error.
    refusal = await conversation.mail()
    assert refusal is not None and refusal.reply.startswith("451 4.7.1 Milter scripted")


def _packet(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + code + data


NEGOTIATED = codec.encode_reply(codec.OptNeg(6, 0, 0))
CONTINUED = codec.encode_reply(codec.Status.CONTINUE)


@pytest.mark.parametrize(("answers", "complaint"), [
    ([b"\x00\x00\x00\x05zzzzz"], "unknown reply code"),
    ([codec.encode_reply(codec.Status.CONTINUE)], "answered the negotiation with CONTINUE"),
    ([codec.encode_reply(codec.OptNeg(7, 0, 0))], "version 7"),
    ([codec.encode_reply(codec.OptNeg(6, 0x200, 0))], "beyond those we offer"),
    ([NEGOTIATED, b"\x7f\xff\xff\xff"], "more than"),
    ([NEGOTIATED, _packet(b"y", b"250 2.0.0 sure\r\nRSET\0")], "not a 4xx or 5xx"),
    ([NEGOTIATED, codec.encode_reply(codec.AddHeader("X-Too", "early"))], "modifications belong at the end"),
    ([NEGOTIATED, b"\x00\x00"], "no answer within"),  # half a packet, then silence
])
async def test_a_milter_that_breaks_the_protocol_gets_on_error_never_a_traceback(
        raw_milter, caplog, answers: list[bytes | None], complaint: str) -> None:
    raw = raw_milter(answers)
    conversation = Conversation(_milter(raw, timeout=0.5))
    with caplog.at_level(logging.WARNING, "appliance.filters"):
        results = [await conversation.connect(), await conversation.helo(), await conversation.mail()]
    refusals = [result for result in results if result is not None]
    assert refusals and all(r.reply == "451 4.7.1 Milter scripted unavailable, try again later" for r in refusals)
    [record] = [r for r in caplog.records if r.name == "appliance.filters"]
    assert complaint in record.getMessage() and record.exc_info is None and "\n" not in record.getMessage()

    accepting = Conversation(_milter(raw_milter(answers), timeout=0.5, on_error="accept"))
    await accepting.envelope_of("bob@other.test")
    verdict = await accepting.data()
    assert verdict.skipped is not None and verdict.skipped.startswith("milter unavailable: ")
    assert complaint in verdict.skipped


async def test_garbage_at_the_end_of_the_message_is_a_scan_error_naming_the_milter(raw_milter) -> None:
    # connect, HELO, MAIL, RCPT, DATA, six header fields, end of headers, the body: then the end of the body
    raw = raw_milter([NEGOTIATED] + [CONTINUED] * 13 + [_packet(b"h", b"X-Broken")])
    conversation = Conversation(_milter(raw))
    await conversation.envelope_of("bob@other.test")
    with pytest.raises(ScanError, match=r"milter scripted \(127\.0\.0\.1:\d+\): protocol error: .*NUL"):
        await conversation.data()


# -- OpenDKIM ---------------------------------------------------------------------------------------------------

async def test_opendkim_signs_the_message_and_the_signature_verifies(opendkim: OpenDKIM) -> None:
    milter = Milter(_config(opendkim.address, name="opendkim"), HOSTNAME)
    conversation = Conversation(milter)
    await conversation.envelope_of("bob@other.test")
    verdict = await conversation.data()
    [signature] = verdict.changes
    # OpenDKIM inserts its field at the top (smfi_insheader at index 0), above the fields it signed.
    assert isinstance(signature, scanner.InsertHeader)
    assert (signature.index, signature.name) == (0, "DKIM-Signature")
    assert f"d={opendkim.domain};" in signature.value and f"s={opendkim.selector};" in signature.value
    signed = f"DKIM-Signature: {signature.value}\r\n".encode() + MESSAGE
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(opendkim.public_key)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == f"{opendkim.selector}._domainkey.{opendkim.domain}".encode() else None

    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Hello Bob.", b"Hello Eve."), dnsfunc=dns)


# -- over the real SMTP engine ---------------------------------------------------------------------------------

class _Kept:
    def __init__(self) -> None:
        self.messages: list[QueuedMessage] = []

    def start(self, message: QueuedMessage) -> _Kept:
        self.messages.append(message)
        return self

    def add_recipient(self, recipient: object) -> None:
        pass

    def body(self, data: bytes) -> None:
        pass

    async def commit(self) -> list:
        return []

    def abort(self) -> None:
        pass


async def test_over_a_real_smtp_session(scripted_milter) -> None:
    """The milter's checks in the SMTP engine: a refused recipient, RSET aborting the transaction, a message
    the milter rejects at its end (a DATA check standing in for the filter engine), QUIT at the end."""
    process = scripted_milter({"on": {"envrcpt": {"match": "nobody@", "result": "reject",
                                                  "reply": ["550", "5.1.1", "unknown here"]},
                                      "eom": {"result": "reject", "reply": ["554", "5.7.1", "spam"]}}})
    milter = _milter(process)
    pipeline = Pipeline()
    milter.register(pipeline)

    async def data(client, transaction, content):  # noqa: ANN001, ANN202
        verdict = await milter.scan(ScanRequest(client, transaction, content, HOSTNAME,
                                                recipients=tuple(transaction.rcpt_tos)))
        return refuse(verdict.reply) if verdict.action is Action.REJECT and verdict.reply else None

    pipeline.register(Stage.DATA, data)
    handler = InboundHandler(HOSTNAME, pipeline, Intake(_Kept()).commit, ListenerOptions("smtp"), None)
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTPServerProtocol(handler, SessionCounter(10), hostname=HOSTNAME, data_size_limit=100_000,
                                   tls_context=None, require_starttls=False), "127.0.0.1", 0)
    try:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.sockets[0].getsockname()[1], timeout=10,
                               local_hostname="client.test")
        await smtp.connect()  # and EHLO
        await smtp.mail("alice@example.test")
        await smtp.rcpt("bob@other.test")
        await smtp.rset()
        await smtp.mail("alice@example.test")
        reply = await smtp.execute_command(b"RCPT", b"TO:<nobody@other.test>")
        assert (reply.code, reply.message) == (550, "5.1.1 unknown here")
        await smtp.rcpt("bob@other.test")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(MESSAGE)
        assert (refused.value.code, refused.value.message) == (554, "5.7.1 spam")
        await smtp.quit()
    finally:
        server.close()
        await server.wait_closed()
    process.wait_for("close")
    assert process.names() == ["negotiate", "connect", "hello", "envfrom", "envrcpt", "abort", "envfrom", "envrcpt",
                               "envrcpt", "data"] + ["header"] * 6 + ["eoh", "body", "eom", "close"]
