"""The spamd scanner: its SPAMD parser alone (hypothesis), then the client against a real spamd and hostile peers.

The real daemon is Debian's spamd with its shipped rules (tests/peers/spamd.py); the hostile peers are asyncio
servers in the test that answer what spamd never would: garbage, half an answer, an endless one, nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peers.named import free_port
from peers.spamd import SpamdServer
from waits import wait_until_async

from appliance.config.model import HostPort, ScannerConfig, UnixSocket
from appliance.filters.scanner import ScanError, ScanRequest
from appliance.filters.spamd import (
    MAX_RESPONSE,
    ParseError,
    SpamdScanner,
    encode_request,
    parse_response,
    parse_symbols,
)
from appliance.smtp.protocol import Envelope, Session

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# What spamd 4.0.1 answered the spamc sample spam with (SYMBOLS SPAMC/1.5), byte for byte.
SPAMD_GTUBE_ANSWER = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
                      b"GTUBE,NO_RECEIVED,NO_RELAYS")


def _message(subject: str, body: str, charset: str = "us-ascii") -> bytes:
    """An ordinary message as a mail client writes it (CRLF line endings), 8bit when the body needs it."""
    encoding = "7bit" if body.isascii() and subject.isascii() else "8bit"
    head = (
        "From: Alice Example <alice@example.org>\r\n"
        "To: Bob Example <bob@example.net>\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 01 Dec 2025 10:00:00 +0000\r\n"
        "Message-ID: <20251201100000.1234@mail.example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset={charset}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n"
    )
    return (head + "\r\n" + body.replace("\n", "\r\n")).encode("utf-8")


CLEAN = _message("Lunch on Thursday", "Hi Bob,\n\nshall we meet at the usual place at noon on Thursday?\n"
                 "I will bring the notes from the planning meeting.\n\nAlice\n")
SPAM = _message("Test", f"This is the GTUBE.\n\n{GTUBE}\n")


def _request(data: bytes) -> ScanRequest:
    session = Session(("192.0.2.10", 40000), None)
    session.host_name = "client.example.org"
    envelope = Envelope()
    envelope.mail_from = "alice@example.org"
    envelope.rcpt_tos = ["bob@example.net"]
    envelope.content = data
    return ScanRequest(client=session, transaction=envelope, data=data, hostname="gw.example.net",
                       recipients=("bob@example.net",))


def _scanner(address: HostPort | UnixSocket, user: str | None = None) -> SpamdScanner:
    return SpamdScanner(ScannerConfig(type="spamassassin", address=address, name="spamassassin", user=user),
                        "gw.example.net")


def _one_line(error: ScanError, address: HostPort | UnixSocket) -> str:
    text = str(error)
    assert "\n" not in text and "\r" not in text
    assert text.startswith(f"spamd at {address}: ")
    return text


# --- The parser, by itself --------------------------------------------------------------------------------------


def test_spamd_s_own_symbols_answer_gives_score_threshold_and_rules() -> None:
    response = parse_response(SPAMD_GTUBE_ANSWER)
    assert (response.version, response.code, response.message) == ("1.1", 0, "EX_OK")
    assert response.status is not None
    assert (response.status.spam, response.status.score, response.status.required) == (True, 1000.0, 5.0)
    assert parse_symbols(response.body) == ("GTUBE", "NO_RECEIVED", "NO_RELAYS")


def test_a_refusal_is_the_status_line_alone_with_spamd_s_reason() -> None:
    response = parse_response(b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 50 bytes, "
                              b"got 5 bytes)\r\n")
    assert (response.code, response.code_name) == (76, "EX_PROTOCOL")
    assert response.message == "Bad header line: (Content-Length mismatch: Expected 50 bytes, got 5 bytes)"


def test_a_ham_answer_with_no_rules_and_a_negative_zero_score() -> None:
    response = parse_response(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.0 / 5.0\r\n\r\n")
    assert response.status is not None and not response.status.spam and response.status.score == 0.0
    assert parse_symbols(response.body) == ()


@pytest.mark.parametrize("answer, reason", [
    (b"", "empty answer"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "not a SPAMD status line"),
    (b"SPAMD/1.1 0 EX_OK", "ends inside the status line"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n", "ends inside the headers"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n", "not in 'Name: value' form"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; 1 / 5\r\n\r\n", "Spam header not"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e999 / 5\r\n\r\n", "Spam header not"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTU", "Content-length 27 but 3"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: -1\r\n\r\n", "not a byte count"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 1\r\nContent-length: 1\r\n\r\nX", "two Content-length"),
    (b"SPAMD/1.1 99999999999 EX_OK\r\n\r\n", "not a SPAMD status line"),
])
def test_what_is_not_a_spamd_answer_is_a_parse_error_saying_why(answer: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_response(answer)


def test_rule_names_are_checked() -> None:
    assert parse_symbols(b"A_RULE,B2\r\n\r\n") == ("A_RULE", "B2")
    for body in (b"GTUBE,,X", b"GTUBE,BAD RULE", b"\xff", b"1ABC"):
        with pytest.raises(ParseError, match="not a rule name"):
            parse_symbols(body)


_rules = st.lists(st.from_regex(r"[_a-zA-Z][_a-zA-Z0-9]{0,40}", fullmatch=True), max_size=30)
_scores = st.decimals(min_value=-100000, max_value=100000, places=1, allow_nan=False, allow_infinity=False)
_blank = st.sampled_from(["", " ", "  ", "\t", " \t"])
_eol = st.sampled_from(["\r\n", "\n"])
_case = st.sampled_from([str, str.lower, str.upper])
_other_headers = st.lists(st.tuples(st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True),
                                    st.from_regex(r"[ -~]{0,30}", fullmatch=True)), max_size=3)


@st.composite
def _answers(draw: st.DrawFn) -> tuple[bytes, bool, float, float, list[str]]:
    """A SYMBOLS answer in any form spamd's protocol allows: header order and case, blanks, line endings,
    headers it does not define yet, CRLFs after the rule list."""
    spam = draw(st.booleans())
    word = draw(st.sampled_from(["True", "Yes"] if spam else ["False", "No"]))
    score, required = draw(_scores), draw(_scores)
    rules = draw(_rules)
    body = (",".join(rules) + draw(st.sampled_from(["", "\r\n", "\r\n\r\n"]))).encode()
    eol = draw(_eol)

    def blank() -> str:
        return draw(_blank)

    headers = [
        (draw(_case)("Content-length"), f"{blank()}{len(body)}{blank()}"),
        (draw(_case)("Spam"), f"{blank()}{word}{blank()};{blank()}{score}{blank()}/{blank()}{required}{blank()}"),
        *((name, value.strip()) for name, value in draw(_other_headers)),
    ]
    headers = draw(st.permutations(headers))
    status = f"SPAMD/1.{draw(st.integers(0, 5))}{draw(st.sampled_from([' ', '  ', chr(9)]))}0 EX_OK"
    head = eol.join([status, *(f"{name}:{value}" for name, value in headers)]) + eol + eol
    return head.encode() + body, spam, float(score), float(required), rules


@given(_answers())
def test_any_answer_spamd_may_write_parses_to_what_it_says(answer: tuple) -> None:
    data, spam, score, required, rules = answer
    response = parse_response(data)
    assert response.code == 0 and response.status is not None
    assert (response.status.spam, response.status.score, response.status.required) == (spam, score, required)
    assert parse_symbols(response.body) == tuple(rules)


@given(_answers(), st.data())
def test_a_cut_answer_is_never_taken_for_a_verdict(answer: tuple, data: st.DataObject) -> None:
    whole = answer[0]
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(ParseError):
        parse_response(whole[:cut])


@given(st.binary(max_size=3000))
def test_garbage_gives_an_answer_or_a_parse_error_and_nothing_else(garbage: bytes) -> None:
    for data in (garbage, b"SPAMD/1.1 0 EX_OK\r\n" + garbage):
        try:
            response = parse_response(data)
        except ParseError as error:
            assert "\n" not in str(error)
            continue
        try:
            parse_symbols(response.body)
        except ParseError as error:
            assert "\n" not in str(error)


@given(_answers(), st.data())
def test_a_damaged_answer_gives_an_answer_or_a_parse_error(answer: tuple, data: st.DataObject) -> None:
    whole = answer[0]
    start = data.draw(st.integers(0, len(whole)))
    end = data.draw(st.integers(start, len(whole)))
    damaged = whole[:start] + data.draw(st.binary(max_size=20)) + whole[end:]
    try:
        parse_symbols(parse_response(damaged).body)
    except ParseError:
        pass


@given(st.binary(max_size=2000), st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_@.+-]{1,40}", fullmatch=True)))
def test_the_request_counts_bytes_and_names_the_user(message: bytes, user: str | None) -> None:
    head = encode_request("SYMBOLS", message, user)
    lines = head.decode("ascii").split("\r\n")
    assert lines[0] == "SYMBOLS SPAMC/1.5"
    assert f"Content-length: {len(message)}" in lines
    assert (f"User: {user}" in lines) == (user is not None)
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1


_forbidden_in_user = st.one_of(st.sampled_from(" :\r\n\t\x00\x7f"), st.characters(min_codepoint=128))


@given(st.tuples(st.text(max_size=10), _forbidden_in_user, st.text(max_size=10)).map("".join))
def test_a_user_name_that_could_forge_a_header_is_refused(user: str) -> None:
    with pytest.raises(ValueError, match="not a spamd user name"):
        encode_request("SYMBOLS", b"x", user)


# --- Against the real spamd -------------------------------------------------------------------------------------


async def test_gtube_is_spam_with_the_gtube_rule(spamd: SpamdServer) -> None:
    verdict = await _scanner(spamd.tcp).scan(_request(SPAM))
    assert verdict.scanner == "spamassassin"
    assert verdict.score is not None and verdict.score >= 1000
    assert verdict.required == 5.0 and verdict.spam
    assert "GTUBE" in verdict.rules


async def test_gtube_over_the_unix_socket(spamd: SpamdServer) -> None:
    verdict = await _scanner(spamd.unix).scan(_request(SPAM))
    assert verdict.spam and "GTUBE" in verdict.rules


async def test_an_ordinary_message_scores_below_the_threshold(spamd: SpamdServer) -> None:
    verdict = await _scanner(spamd.tcp).scan(_request(CLEAN))
    assert verdict.score is not None and verdict.required is not None
    assert verdict.score < verdict.required and not verdict.spam
    assert "GTUBE" not in verdict.rules


async def test_an_8bit_utf8_message_is_sent_whole(spamd: SpamdServer) -> None:
    # spamd answers EX_PROTOCOL when Content-length is not the byte count: a character count would be short.
    message = _message("Grüße aus Köln", "Hallo Bob,\n\ntreffen wir uns Donnerstag im Café? Ich bringe "
                       "die Unterlagen mit.\n\nViele Grüße\nAlice — 東京\n", charset="utf-8")
    assert len(message) > len(message.decode("utf-8"))
    verdict = await _scanner(spamd.tcp).scan(_request(message))
    assert verdict.score is not None and verdict.required is not None and verdict.score < verdict.required


async def test_a_configured_user_is_accepted_by_spamd(spamd: SpamdServer) -> None:
    verdict = await _scanner(spamd.tcp, user="nobody").scan(_request(SPAM))
    assert verdict.spam and "GTUBE" in verdict.rules


async def test_ten_scans_at_once_are_all_answered_each_with_its_own_verdict(spamd: SpamdServer) -> None:
    scanner = _scanner(spamd.tcp)
    messages = [SPAM if i % 2 else CLEAN for i in range(10)]
    verdicts = await asyncio.gather(*(scanner.scan(_request(m)) for m in messages))
    assert [v.spam for v in verdicts] == [m is SPAM for m in messages]
    assert all(("GTUBE" in v.rules) == (m is SPAM) for v, m in zip(verdicts, messages, strict=True))


async def test_spamd_down_is_a_scan_error_naming_the_address() -> None:
    address = HostPort("127.0.0.1", free_port(["127.0.0.1"]))
    with pytest.raises(ScanError) as caught:
        await _scanner(address).scan(_request(CLEAN))
    assert _one_line(caught.value, address) == f"spamd at {address}: cannot connect: Connection refused"


async def test_a_missing_unix_socket_is_a_scan_error_naming_the_path(tmp_path: Path) -> None:
    address = UnixSocket(tmp_path / "no-spamd.sock")
    with pytest.raises(ScanError) as caught:
        await _scanner(address).scan(_request(CLEAN))
    assert _one_line(caught.value, address).endswith("cannot connect: No such file or directory")


def test_a_user_name_that_could_forge_a_header_is_refused_when_the_scanner_is_built() -> None:
    with pytest.raises(ValueError, match="scanner 'spamassassin': user 'a\\\\r\\\\nb'"):
        _scanner(HostPort("127.0.0.1", 783), user="a\r\nb")


# --- Hostile peers ----------------------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A loopback server running a handler per connection. It never closes a connection itself unless the handler
    does, so `client_gone` tells whether the client closed its side."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: what these peers are here to see

    def client_gone(self) -> bool:
        """Whether every client closed its connection: a closed socket answers data with a reset, after which
        the peer's next write fails and its transport closes. A client still connected just buffers the bytes."""
        for writer in self.writers:
            if not writer.transport.is_closing():
                writer.write(b"\r\n")
        return bool(self.writers) and all(writer.transport.is_closing() for writer in self.writers)


@asynccontextmanager
async def hostile(handler: Handler) -> AsyncIterator[tuple[Peer, HostPort]]:
    peer = Peer(handler)
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    try:
        yield peer, HostPort("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        for writer in peer.writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """The request's head and the Content-length bytes that follow it."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-length:")).split(b":")[1])
    return head + await reader.readexactly(length)


def _answering(answer: bytes) -> Handler:
    """A peer that reads the request, writes `answer` and closes, as spamd does."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()
    return handler


async def _scan_error(address: HostPort, data: bytes = CLEAN) -> str:
    with pytest.raises(ScanError) as caught:
        await _scanner(address).scan(_request(data))
    return _one_line(caught.value, address)


async def test_the_request_is_what_spamd_reads_and_the_client_half_closes() -> None:
    seen: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        seen.append(await reader.read())  # the end of the stream: the client shut down its sending side
        writer.write(SPAMD_GTUBE_ANSWER)
        writer.close()

    message = _message("Grüße", "Grüße\n", charset="utf-8")
    async with hostile(recording) as (_, address):
        verdict = await _scanner(address, user="mailfleet").scan(_request(message))
    assert seen == [b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\nUser: mailfleet\r\n\r\n" % len(message) + message,
                    b""]
    assert verdict.rules == ("GTUBE", "NO_RECEIVED", "NO_RELAYS")


@pytest.mark.parametrize("answer, problem", [
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
     "malformed answer: not a SPAMD status line: 'HTTP/1.1 400 Bad Request'"),
    (b"\x00\xff\x1b[2J garbage",
     "malformed answer: the answer ends inside the status line: '\\x00\\xff\\x1b[2J garbage'"),
    (SPAMD_GTUBE_ANSWER[:-10], "malformed answer: Content-length 27 but 17 bytes followed"),
    (b"SPAMD/1.0 76 Bad header line: (EOF during headers)\r\n",
     "refused the message: EX_PROTOCOL (76) 'Bad header line: (EOF during headers)'"),
    (b"SPAMD/1.0 79 Timeout: (300 second timeout while trying to SYMBOLS)\r\n",
     "refused the message: EX_TIMEOUT (79) 'Timeout: (300 second timeout while trying to SYMBOLS)'"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\n\r\nGTUBE", "answered EX_OK without a Spam header"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 9\r\nSpam: True ; 9.0 / 5.0\r\n\r\nrm -rf /*",
     "malformed answer: not a rule name: 'rm -rf /*'"),
])
async def test_a_peer_that_is_not_spamd_gives_a_one_line_scan_error(answer: bytes, problem: str) -> None:
    async with hostile(_answering(answer)) as (_, address):
        assert await _scan_error(address) == f"spamd at {address}: {problem}"


async def test_a_peer_that_closes_without_answering() -> None:
    async with hostile(_answering(b"")) as (_, address):
        assert await _scan_error(address) == f"spamd at {address}: closed the connection without an answer"


async def test_a_peer_that_resets_the_connection_while_the_message_is_sent() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.transport.abort()  # unread data in its buffer: the kernel answers with a reset

    async with hostile(rude) as (_, address):
        text = await _scan_error(address, CLEAN * 100000)
    assert text.startswith(f"spamd at {address}: connection lost while sending the message: ")


async def test_an_endless_answer_is_cut_off_and_the_connection_closed() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 999999999999\r\n\r\n")
        while True:
            writer.write(b"GTUBE," * 10000)
            await writer.drain()

    async with hostile(endless) as (peer, address):
        text = await _scan_error(address)
        assert text == f"spamd at {address}: answered more than {MAX_RESPONSE} bytes (not spamd?)"
        await wait_until_async(peer.client_gone, what="the endless peer to see the connection closed")


async def _mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request and never answers."""
    await _read_request(reader)


async def test_a_scan_cancelled_while_waiting_for_the_answer_closes_its_connection() -> None:
    async with hostile(_mute) as (peer, address):
        task = asyncio.create_task(_scanner(address).scan(_request(CLEAN)))
        await wait_until_async(lambda: peer.writers, what="the scan to connect")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_async(peer.client_gone, what="the peer to see the cancelled scan's connection closed")


async def test_a_scan_cancelled_while_the_peer_does_not_read_closes_its_connection() -> None:
    read = asyncio.Event()

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        read.set()  # and reads no more: the client is left waiting for room to send the rest

    async with hostile(stalled) as (peer, address):
        task = asyncio.create_task(_scanner(address).scan(_request(CLEAN * 100000)))  # 30 MB: more than buffers
        await read.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_async(peer.client_gone, what="the peer to see the cancelled scan's connection closed")


async def test_the_engine_s_timeout_on_a_peer_that_never_answers_closes_the_connection() -> None:
    async with hostile(_mute) as (peer, address):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_scanner(address).scan(_request(CLEAN)), 0.2)
        await wait_until_async(peer.client_gone, what="the peer to see the timed-out scan's connection closed")
