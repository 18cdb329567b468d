"""The SMTP engine (smtp.protocol) answers the same however TCP cuts the client's bytes into segments.

The engine is driven through its asyncio.Protocol interface (data_received), the way the event loop drives it,
with a transport that records what is written; the end-to-end behaviour is covered by the other modules here,
against the real server.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.pipeline.limits import SizeLimit
from appliance.pipeline.smuggling import line_endings
from appliance.pipeline.stages import MailFrom
from appliance.smtp.commands import MailParams
from appliance.smtp.protocol import Envelope, Session, SMTPServerProtocol


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Handler:
    """Accepts every sender and recipient but <nobody@x.test>; keeps the messages. The size and line-ending
    decisions are the pipeline's own checks (pipeline.limits, pipeline.smuggling), as in smtp.server."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        self.size = SizeLimit(1000)

    def handle_CONNECT(self, session: Session) -> str | None:
        return None

    def handle_PREGREET(self, session: Session) -> None:
        return None

    def handle_HELO(self, session: Session, name: str) -> str | None:
        return None

    def auth_offered(self, session: Session) -> bool:
        return False

    def refuse_auth(self, session: Session) -> str | None:
        return "502 5.5.1 no AUTH here"

    def handle_MAIL(self, session: Session, envelope: Envelope, address: str, params: MailParams,
                    options: list[str]) -> str:
        refused = self.size.mail(session, envelope, MailFrom(address, params.size))
        if refused is not None:
            return refused.reply or ""
        envelope.mail_from = address
        return "250 2.1.0 OK"

    def handle_RCPT(self, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address == "nobody@x.test":
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, session: Session, envelope: Envelope) -> str:
        for check in (self.size.data, line_endings):
            refused = check(session, envelope, envelope.content)
            if refused is not None:
                return refused.reply or ""
        await asyncio.sleep(0)  # a real commit waits for the disk
        self.messages.append((envelope.content, envelope.dot_lines))
        return f"250 2.0.0 OK queued as {len(self.messages)}"

    def handle_exception(self, error: BaseException) -> str:
        raise AssertionError(f"unexpected {error!r}")

    def handle_CLOSE(self, session: Session) -> None:
        pass


class _Sessions(set):
    pass


SCRIPT = (b"EHLO client.test\r\nMAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<nobody@x.test>\r\n"
          b"RCPT TO:<b@x.test>\r\nDATA\r\nSubject: one\r\n\r\n..dot line\r\nbody\r\n.\r\n"
          b"MAIL FROM:<>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n.\r\n"
          b"MAIL FROM:<a@x.test>\r\nRCPT TO:<d@x.test>\r\nDATA\r\nsmuggled\n.\nMAIL FROM:<evil@x.test>\r\n.\r\n"
          b"NOOP\r\nFOO\r\nQUIT\r\nNOOP\r\n")  # nothing is answered after QUIT


def _run(chunks: list[bytes]) -> tuple[bytes, list[tuple[bytes, bool]], bool]:
    async def session() -> tuple[bytes, list[tuple[bytes, bool]], bool]:
        handler = _Handler()
        protocol = SMTPServerProtocol(handler, _Sessions(), hostname="mx.test", data_size_limit=1000,
                                      tls_context=None, require_starttls=False)
        transport = _Transport()
        protocol.connection_made(transport)
        for chunk in chunks:
            protocol.data_received(chunk)
            for _ in range(3):
                await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return bytes(transport.written), handler.messages, transport.closed

    return asyncio.run(session())


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


EXPECTED = _run([SCRIPT])


def test_one_segment() -> None:
    replies, messages, closed = EXPECTED
    codes = [line[:3] for line in replies.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220", b"250", b"250", b"550", b"250", b"354", b"250",  # EHLO's last line, then MAIL...
                     b"250", b"250", b"354", b"250",
                     b"250", b"250", b"354", b"550",  # bare LF: refused, and the "MAIL" inside is not a command
                     b"250", b"500", b"221"]
    # RFC 5321 §4.5.2: the stuffed dot is removed, and the engine says which message has lines to stuff again
    assert messages == [(b"Subject: one\r\n\r\n.dot line\r\nbody\r\n", True), (b"", False)]
    assert closed
    assert b"250-PIPELINING" in replies and b"250 2.0.0 OK\r\n" in replies  # NOOP got its enhanced code


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=25))
def test_any_segmentation(cuts: list[int]) -> None:
    assert _run(_cut(SCRIPT, cuts)) == EXPECTED


def test_byte_by_byte() -> None:
    assert _run([SCRIPT[i:i + 1] for i in range(len(SCRIPT))]) == EXPECTED


_WORDS = [b"EHLO x", b"HELO x", b"MAIL FROM:<a@x.test>", b"MAIL FROM:<>", b"MAIL FROM:<a@x.test> SIZE=5000",
          b"MAIL FROM:<a@x.test> BODY=BINARY", b"MAIL FROM:", b"MAIL", b"RCPT TO:<b@x.test>",
          b"RCPT TO:<nobody@x.test>", b"RCPT TO:<b@x.test> NOTIFY=NEVER", b"RCPT TO:<0@[>", b"RCPT TO:<\xff@x>",
          b"DATA", b"DATA x", b".", b"..", b"line", b"RSET", b"NOOP", b"VRFY <a@b>", b"VRFY", b"EXPN x", b"HELP",
          b"HELP MAIL", b"STARTTLS", b"AUTH PLAIN", b"BDAT 10", b"", b"\x00\x01", b"x" * 600, b"M\xc4IL"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=30), st.sampled_from([b"\r\n", b"\n"]),
       st.lists(st.integers(min_value=0, max_value=5_000), max_size=10))
def test_any_command_sequence_gets_well_formed_replies(words: list[bytes], end: bytes, cuts: list[int]) -> None:
    """Malformed commands, commands out of order, bare LF line ends: every line gets a well-formed reply and
    nothing escapes the engine (the test handler fails the test if the engine reports an internal error)."""
    script = b"".join(w + end for w in words)
    replies, _, _ = _run(_cut(script, cuts) if script else [])
    lines = replies.split(b"\r\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b" ", b"-", b""), line
    assert lines[0].startswith(b"220 ")


def test_a_client_flooding_commands_during_a_commit_is_paused_then_answered_in_order() -> None:
    """While a message is being committed, pipelined commands wait in the buffer; past 64 KB the engine stops
    reading from the socket (memory stays bounded) and resumes once the commit is done."""
    async def session() -> tuple[list[str], bytes, int]:
        release = asyncio.Event()
        events: list[str] = []

        class _Slow(_Handler):
            async def handle_DATA(self, session: Session, envelope: Envelope) -> str:
                await release.wait()
                return await super().handle_DATA(session, envelope)

        class _Recording(_Transport):
            def pause_reading(self) -> None:
                events.append("pause")

            def resume_reading(self) -> None:
                events.append("resume")

        protocol = SMTPServerProtocol(_Slow(), _Sessions(), hostname="mx.test", data_size_limit=1000,
                                      tls_context=None, require_starttls=False)
        transport = _Recording()
        protocol.connection_made(transport)
        protocol.data_received(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nhi\r\n.\r\n")
        await asyncio.sleep(0)
        sent = 0
        while not events and sent < 1_000_000:  # NOOPs, 1.2 KB at a time, until the engine stops reading
            protocol.data_received(b"NOOP\r\n" * 200)
            sent += 1200
        assert 64 * 1024 < sent <= 64 * 1024 + 1200  # it stopped just past 64 KB
        assert len(protocol._buf) == sent  # nothing handled while the commit waits
        release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        return events, bytes(transport.written), sent // len(b"NOOP\r\n")

    events, written, noops = asyncio.run(session())
    assert events == ["pause", "resume"]
    assert written.split(b"\r\n").count(b"250 2.0.0 OK") == noops  # every NOOP answered once
    assert b"250 2.0.0 OK queued as 1" in written
    assert written.index(b"queued as 1") < written.index(b"250 2.0.0 OK\r\n")  # answered in order
