"""The rspamd client against a real rspamd 3.4 (tests/peers/rspamd.py), hostile HTTP peers, and its reply parser.

What a mail administrator checks: GTUBE is refused with rspamd's reason, a clean message passes with a score, the
settings id of the config is applied, rspamd sees the envelope the gateway saw, many scans share the connection
pool, and a dead, broken or hanging rspamd gives a one-line ScanError (or a clean cancellation), never a
traceback or a hang.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peers.named import free_port
from peers.rspamd import STRICT, SUBJECT, RspamdServer
from waits import wait_until_async

from appliance.config.model import HostPort, ScannerConfig, UnixSocket
from appliance.filters.rspamd import (
    MAX_REPLY,
    RspamdScanner,
    decode_reply,
    header_names,
    parse_reply,
    request_headers,
)
from appliance.filters.scanner import (
    Action,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    ScanError,
    ScanRequest,
    Verdict,
)
from appliance.smtp.protocol import Envelope, Session

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def session(ip: str = "203.0.113.5", host_name: str | None = "mx.example.org", login: str | None = None) -> Session:
    """The SMTP engine's own connection state, as the engine hands it to the scanners."""
    client = Session((ip, 49152), None)
    client.host_name, client.login = host_name, login
    return client


def message(body: bytes = b"Hello there, this is a normal message.", *, headers: str = "",
            subject: str = "hello") -> bytes:
    head = ("From: a@example.org\r\nTo: b@example.net\r\n"
            f"Subject: {subject}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
            f"{headers}\r\n")
    return head.encode() + body + b"\r\n"


def scan_request(data: bytes, *, sender: str = "a@example.org", recipients: tuple[str, ...] = ("b@example.net",),
                 client: Session | None = None, queue_id: str = "", hostname: str = "gw.example.com") -> ScanRequest:
    envelope = Envelope()
    envelope.mail_from = sender or "<>"
    envelope.rcpt_tos = list(recipients)
    envelope.accepted = [(rcpt, (rcpt,)) for rcpt in recipients]
    envelope.content = data
    return ScanRequest(client or session(), envelope, data, hostname, queue_id, recipients)


def envelope_seen(verdict: Verdict) -> list[str]:
    """What the MAILFLEET_ENVELOPE probe reported rspamd got of the envelope."""
    values = [value for name, value in verdict.headers if name == "X-Mailfleet-Envelope"]
    assert len(values) == 1, verdict.headers
    return values[0].split("; ")


@pytest.fixture
async def scanner(rspamd: RspamdServer):
    client = RspamdScanner(rspamd.scanner_config(), "gw.example.com")
    yield client
    await client.close()


# --- the real rspamd --------------------------------------------------------------------------------------------

async def test_gtube_is_rejected_with_rspamds_own_reason(scanner: RspamdScanner) -> None:
    verdict = await scanner.scan(scan_request(message(GTUBE)))
    assert verdict.scanner == "rspamd"
    assert verdict.action is Action.REJECT
    assert "GTUBE" in verdict.rules
    # rspamd gives only the text ("Gtube pattern"): the client puts the reject code in front.
    assert verdict.reply == "550 5.7.1 Gtube pattern"


async def test_the_pass_unchecked_test_pattern_is_not_honoured(scanner: RspamdScanner) -> None:
    """With enable_test_patterns off (the production setting) the "no action" GTUBE variant is plain text: the
    message is scanned like any other, not waved through."""
    verdict = await scanner.scan(scan_request(message(b"A" + GTUBE[1:])))
    assert verdict.action is Action.NONE and verdict.skipped is None
    assert "GTUBE" not in verdict.rules and "MIME_GOOD" in verdict.rules


async def test_a_clean_message_passes_with_a_score_below_the_threshold(scanner: RspamdScanner) -> None:
    verdict = await scanner.scan(scan_request(message()))
    assert verdict.action is Action.NONE
    assert verdict.score is not None and verdict.required == 15.0  # Debian's reject score
    assert verdict.score < 4.0 and not verdict.spam
    assert verdict.reply is None and verdict.skipped is None
    assert "MIME_GOOD" in verdict.rules
    # milter_headers' x-spam-status routine, as rspamd asks for it in the milter block
    assert ("X-Spam-Status", f"No, score={verdict.score:.2f}") in verdict.headers


async def test_the_settings_id_is_sent_and_changes_the_outcome(rspamd: RspamdServer) -> None:
    spammy = scan_request(message(headers="X-Mailfleet-Test: spammy\r\n"))
    plain = RspamdScanner(rspamd.scanner_config(), "gw.example.com")
    strict = RspamdScanner(rspamd.scanner_config(settings_id=STRICT), "gw.example.com")
    try:
        default, tightened = await plain.scan(spammy), await strict.scan(spammy)
    finally:
        await plain.close()
        await strict.close()
    # MAILFLEET_SPAMMY's 8 (less MIME_GOOD's 0.1): between the strict reject score and Debian's.
    assert "MAILFLEET_SPAMMY" in default.rules and default.score is not None and 7.0 <= default.score < 15.0
    assert (default.action, default.required) == (Action.ADD_HEADER, 15.0)
    assert (tightened.action, tightened.required) == (Action.REJECT, 7.0)
    assert tightened.score == default.score
    # The settings id is in rspamd's log line of the task.
    assert f"settings_id: {STRICT}" in rspamd.log()


async def test_rewrite_subject_carries_the_subject_rspamd_made(rspamd: RspamdServer) -> None:
    client = RspamdScanner(rspamd.scanner_config(settings_id=SUBJECT), "gw.example.com")
    try:
        verdict = await client.scan(scan_request(message(headers="X-Mailfleet-Test: spammy\r\n")))
    finally:
        await client.close()
    assert verdict.action is Action.REWRITE_SUBJECT
    assert verdict.subject == "*** SPAM *** hello"


async def test_rspamd_sees_the_envelope_of_the_session(scanner: RspamdScanner) -> None:
    client = session(ip="198.51.100.7", host_name="relay.example.org", login="alice")
    verdict = await scanner.scan(scan_request(message(), sender="bob@example.org",
                                              recipients=("b@example.net", "c@example.net"),
                                              client=client, queue_id="4QxYz1"))
    assert envelope_seen(verdict) == ["ip=198.51.100.7", "helo=relay.example.org", "from=bob@example.org",
                                      "rcpt=b@example.net", "rcpt=c@example.net", "user=alice", "qid=4QxYz1",
                                      "mta=gw.example.com"]


async def test_the_null_sender_reaches_rspamd_as_such(scanner: RspamdScanner) -> None:
    verdict = await scanner.scan(scan_request(message(), sender="", client=session(login=None)))
    assert "from=" in envelope_seen(verdict)  # rspamd parsed "<>": an empty address, not a missing one
    assert not any(seen.startswith("user=") for seen in envelope_seen(verdict))


async def test_a_hostile_helo_cannot_add_request_headers(scanner: RspamdScanner) -> None:
    client = session(host_name="evil.example\r\nSettings-ID: " + STRICT)
    verdict = await scanner.scan(scan_request(message(headers="X-Mailfleet-Test: spammy\r\n"), client=client))
    assert verdict.required == 15.0  # the strict settings were not smuggled in
    assert f"helo=evil.exampleSettings-ID: {STRICT}" in envelope_seen(verdict)


async def test_removals_of_the_milter_block_become_deletions_of_definite_fields(scanner: RspamdScanner) -> None:
    data = message(headers="X-Spam: yes\r\nX-Spam-Status: Yes, score=99\r\nX-Spam-Status: Yes, again\r\n")
    verdict = await scanner.scan(scan_request(data))
    # remove_upstream_spam_flag asks for X-Spam: 0 (all of them); x-spam-status for X-Spam-Status: 0.
    assert set(verdict.changes) == {ChangeHeader("X-Spam", 1, ""), ChangeHeader("X-Spam-Status", 2, ""),
                                    ChangeHeader("X-Spam-Status", 1, "")}
    status = [change for change in verdict.changes if change.name == "X-Spam-Status"]  # type: ignore[union-attr]
    assert [change.index for change in status] == [2, 1]  # type: ignore[union-attr]


async def test_a_text_only_soft_reject_gets_451_and_a_full_reply_is_kept(scanner: RspamdScanner) -> None:
    limited = await scanner.scan(scan_request(message(headers="X-Mailfleet-Test: ratelimit\r\n")))
    assert limited.action is Action.SOFT_REJECT
    assert limited.reply == "451 4.7.1 Ratelimit exceeded: try again in a minute"
    blocked = await scanner.scan(scan_request(message(headers="X-Mailfleet-Test: blocked\r\n")))
    assert blocked.action is Action.REJECT
    assert blocked.reply == "554 5.7.1 Sender blocked by local policy"


async def test_the_unix_socket_works_as_tcp_does(rspamd: RspamdServer) -> None:
    client = RspamdScanner(rspamd.scanner_config(unix=True), "gw.example.com")
    try:
        verdict = await client.scan(scan_request(message(GTUBE)))
    finally:
        await client.close()
    assert verdict.action is Action.REJECT and "GTUBE" in verdict.rules


async def test_concurrent_scans_share_a_bounded_pool_without_mixing_answers(rspamd: RspamdServer) -> None:
    client = RspamdScanner(rspamd.scanner_config(), "gw.example.com", max_connections=4)
    try:
        verdicts = await asyncio.gather(*(
            client.scan(scan_request(message(GTUBE if n % 3 == 0 else b"Hello number %d." % n),
                                     queue_id=f"Q{n:03d}"))
            for n in range(30)))
    finally:
        await client.close()
    for n, verdict in enumerate(verdicts):
        if n % 3 == 0:
            assert verdict.action is Action.REJECT and "GTUBE" in verdict.rules
        else:  # each answer is its own message's: the queue id rspamd saw is that message's
            assert verdict.action is Action.NONE and f"qid=Q{n:03d}" in envelope_seen(verdict)


async def test_rspamd_down_is_a_scan_error_naming_the_address(tmp_path: Path) -> None:
    port = free_port(["127.0.0.1"])
    tcp = RspamdScanner(ScannerConfig("rspamd", HostPort("127.0.0.1", port), name="rspamd"), "gw")
    unix = RspamdScanner(ScannerConfig("rspamd", UnixSocket(tmp_path / "none.sock"), name="rspamd"), "gw")
    try:
        with pytest.raises(ScanError, match=rf"^rspamd 127\.0\.0\.1:{port}: cannot connect: Connection refused$"):
            await tcp.scan(scan_request(message()))
        with pytest.raises(ScanError, match=rf"^rspamd unix:{re.escape(str(tmp_path))}/none\.sock: cannot connect: "
                                            "No such file or directory$"):
            await unix.scan(scan_request(message()))
    finally:
        await tcp.close()
        await unix.close()


# --- hostile HTTP peers -----------------------------------------------------------------------------------------

Behaviour = Callable[["HttpPeer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_GOOD_REPLY = json.dumps({"score": 1.5, "required_score": 15.0, "action": "no action",
                          "symbols": {"R_TEST": {"name": "R_TEST", "score": 1.5}}}).encode()


class HttpPeer:
    """A real HTTP server on loopback that reads each request whole and answers as `behaviour` says."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests = 0
        self.heads: list[bytes] = []
        self.disconnected = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> HttpPeer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def scanner(self, timeout: float = 30.0, max_connections: int = 4) -> RspamdScanner:
        config = ScannerConfig("rspamd", HostPort("127.0.0.1", self.port), name="rspamd", timeout=timeout)
        return RspamdScanner(config, "gw.example.com", max_connections=max_connections)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's body, or None at the end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        body = await reader.readexactly(length)
        self.heads.append(head)
        self.requests += 1
        return body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.behaviour(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def answer(status: str, body: bytes, extra: str = "", keep_alive: bool = False) -> Behaviour:
    async def behaviour(peer: HttpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await peer.read_request(reader) is not None:
            connection = "keep-alive" if keep_alive else "close"
            writer.write(f"HTTP/1.1 {status}\r\nConnection: {connection}\r\nContent-Length: {len(body)}\r\n"
                         f"{extra}\r\n".encode() + body)
            await writer.drain()
            if not keep_alive:
                return
    return behaviour


async def endless(peer: HttpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await peer.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"[" * 65536
    while True:  # until the client goes away
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


async def close_after_request(peer: HttpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await peer.read_request(reader)


async def close_mid_body(peer: HttpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await peer.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + _GOOD_REPLY[:20])
    await writer.drain()


async def not_http(peer: HttpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await peer.read_request(reader)
    writer.write(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n")
    await writer.drain()


async def hang(peer: HttpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, answer nothing, and count the client's going away."""
    await peer.read_request(reader)
    await reader.read()  # b"" once the client closes
    peer.disconnected += 1


async def hostile(behaviour: Behaviour) -> str:
    """The ScanError a scan against a peer that behaves so ends in."""
    peer = await HttpPeer(behaviour).start()
    client = peer.scanner()
    try:
        with pytest.raises(ScanError) as caught:
            await client.scan(scan_request(message()))
    finally:
        await client.close()
        await peer.stop()
    error = str(caught.value)
    assert error.startswith(f"rspamd 127.0.0.1:{peer.port}: ") and "\n" not in error
    return error


async def test_an_http_error_names_status_and_rspamds_error() -> None:
    error = await hostile(answer("500 invalid command", b'{"error":"invalid command","error_domain":"x"}'))
    assert error.endswith("HTTP 500 invalid command: invalid command")
    assert (await hostile(answer("503 Busy", b"<html>busy</html>"))).endswith("HTTP 503 Busy")


async def test_a_reply_that_is_not_json_or_not_a_reply_is_refused() -> None:
    assert "reply is not JSON" in await hostile(answer("200 OK", b"<html>hello</html>"))
    assert "no numeric score" in await hostile(answer("200 OK", b'{"action": "reject"}'))
    assert "unknown action 'explode'" in await hostile(answer("200 OK", json.dumps(
        {"score": 1, "required_score": 2, "action": "explode"}).encode()))
    assert "not JSON" in await hostile(answer("200 OK", b"[" * 100000))  # nested past the parser's recursion


async def test_an_oversize_reply_is_refused_declared_or_endless() -> None:
    declared = await hostile(_declared_oversize)
    assert f"more than the {MAX_REPLY} allowed" in declared
    assert f"longer than the {MAX_REPLY} bytes allowed" in await hostile(endless)


async def _declared_oversize(peer: HttpPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await peer.read_request(reader)
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_REPLY + 1}\r\n\r\n{{".encode())
    await writer.drain()


async def test_a_compressed_reply_nobody_asked_for_is_refused() -> None:
    error = await hostile(answer("200 OK", b"\x1f\x8b", extra="Content-Encoding: gzip\r\n"))
    assert "reply compressed (gzip)" in error


async def test_a_peer_closing_early_or_not_speaking_http_is_a_scan_error() -> None:
    assert "disconnected" in (await hostile(close_after_request)).lower()
    assert "without sending complete message body" in await hostile(close_mid_body)
    assert "illegal status line" in await hostile(not_http)


async def test_httpx_own_timeout_is_a_scan_error() -> None:
    peer = await HttpPeer(hang).start()
    client = peer.scanner(timeout=0.2)
    try:
        with pytest.raises(ScanError, match=rf"^rspamd 127\.0\.0\.1:{peer.port}: timed out"):
            await client.scan(scan_request(message()))
    finally:
        await client.close()
        await peer.stop()


async def test_cancellation_closes_the_connection_and_leaves_the_pool_usable() -> None:
    behaviours: list[Behaviour] = [hang, answer("200 OK", _GOOD_REPLY)]

    async def first_hang_then_answer(peer: HttpPeer, reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
        await behaviours.pop(0)(peer, reader, writer)

    peer = await HttpPeer(first_hang_then_answer).start()
    client = peer.scanner(max_connections=1)
    try:
        task = asyncio.ensure_future(client.scan(scan_request(message())))
        await wait_until_async(lambda: peer.requests == 1, what="the request to reach the peer")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_async(lambda: peer.disconnected == 1, what="the cancelled scan's connection to close")
        # The only connection of the pool was given back: the next scan gets one.
        verdict = await client.scan(scan_request(message()))
        assert (verdict.action, verdict.score, verdict.rules) == (Action.NONE, 1.5, ("R_TEST",))
    finally:
        await client.close()
        await peer.stop()


async def test_the_engines_wait_for_ends_a_hanging_scan_cleanly() -> None:
    peer = await HttpPeer(hang).start()
    client = peer.scanner()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.scan(scan_request(message())), 0.2)
        await wait_until_async(lambda: peer.disconnected == 1, what="the timed-out scan's connection to close")
    finally:
        await client.close()
        await peer.stop()


async def test_utf8_addresses_are_sent_as_utf8() -> None:
    """RFC 6531 addresses go as UTF-8 (h11 takes any octet above 0x7f in a field value). rspamd 3.4 itself
    ignores them ("bad from header" in its log), later versions read them."""
    peer = await HttpPeer(answer("200 OK", _GOOD_REPLY)).start()
    client = peer.scanner()
    try:
        await client.scan(scan_request(message(), sender="jürgen@example.org",
                                       recipients=("zoë@example.net", "b@example.net")))
    finally:
        await client.close()
        await peer.stop()
    head = peer.heads[0]
    assert head.startswith(b"POST /checkv2 HTTP/1.1\r\n")
    assert b"\r\nFrom: j\xc3\xbcrgen@example.org\r\n" in head
    assert b"\r\nRcpt: zo\xc3\xab@example.net\r\nRcpt: b@example.net\r\n" in head
    assert b"\r\naccept-encoding: identity\r\n" in head.lower()
    assert b"pass:" not in head.lower()  # Pass: all would make rspamd run every rule even once decided


async def test_keep_alive_connections_are_reused() -> None:
    peer = await HttpPeer(answer("200 OK", _GOOD_REPLY, keep_alive=True)).start()
    client = peer.scanner()
    try:
        for _ in range(5):
            assert (await client.scan(scan_request(message()))).score == 1.5
    finally:
        await client.close()
        await peer.stop()
    assert (peer.requests, peer.connections) == (5, 1)


async def test_the_pool_bounds_the_connections_in_flight() -> None:
    scans, limit = 10, 2
    held: list[asyncio.Future[None]] = []

    async def held_until_the_pool_is_full(peer: HttpPeer, reader: asyncio.StreamReader,
                                          writer: asyncio.StreamWriter) -> None:
        while await peer.read_request(reader) is not None:
            release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            held.append(release)
            if len(held) % limit == 0 or peer.requests == scans:
                for waiting in held:
                    if not waiting.done():
                        waiting.set_result(None)
            await release
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_GOOD_REPLY), _GOOD_REPLY))
            await writer.drain()

    peer = await HttpPeer(held_until_the_pool_is_full).start()
    client = peer.scanner(max_connections=limit)
    try:
        verdicts = await asyncio.gather(*(client.scan(scan_request(message())) for _ in range(scans)))
    finally:
        await client.close()
        await peer.stop()
    assert [verdict.score for verdict in verdicts] == [1.5] * scans
    assert peer.peak == limit and peer.requests == scans


# --- the parser, by itself --------------------------------------------------------------------------------------

WHERE = "rspamd 127.0.0.1:11333"


def parse(document: object, names: list[str] | None = None) -> Verdict:
    return parse_reply(document, "rspamd", WHERE, names or [])


def reply(**fields: object) -> dict[str, object]:
    return {"score": 3.0, "required_score": 15.0, "action": "no action", **fields}


@pytest.mark.parametrize(("action", "expected"), [
    ("no action", Action.NONE), ("add header", Action.ADD_HEADER), ("rewrite subject", Action.REWRITE_SUBJECT),
    ("greylist", Action.GREYLIST), ("soft reject", Action.SOFT_REJECT), ("reject", Action.REJECT),
    ("discard", Action.QUARANTINE), ("quarantine", Action.QUARANTINE),
])
def test_every_rspamd_action_has_its_verdict(action: str, expected: Action) -> None:
    assert parse(reply(action=action)).action is expected


@pytest.mark.parametrize(("action", "text", "expected"), [
    ("reject", "Gtube pattern", "550 5.7.1 Gtube pattern"),
    ("reject", "554 5.7.1 Sender blocked", "554 5.7.1 Sender blocked"),
    ("reject", "554 Sender blocked", "554 5.7.1 Sender blocked"),
    ("reject", "554-5.7.1 Sender blocked", "554 5.7.1 Sender blocked"),
    ("reject", "250 2.0.0 Ok, really", "550 5.7.1 Ok, really"),  # a success is never a refusal's reply
    ("reject", "550", "550 5.7.1 Message refused by the spam filter"),
    ("reject", "550 4.7.1 mixed", "550 5.7.1 mixed"),
    ("soft reject", "Ratelimit exceeded", "451 4.7.1 Ratelimit exceeded"),
    ("soft reject", "550 5.7.1 no", "451 4.7.1 no"),
    ("greylist", "Try again later", "451 4.7.1 Try again later"),
    ("greylist", "450 4.2.0 Greylisted", "450 4.2.0 Greylisted"),
    ("reject", "line one\r\nline two", "550 5.7.1 line one line two"),
    ("add header", "Gtube pattern", None),
    ("no action", "hello", None),
])
def test_rspamds_smtp_message_becomes_a_reply_of_the_actions_class(action: str, text: str,
                                                                   expected: str | None) -> None:
    verdict = parse(reply(action=action, messages={"smtp_message": text}))
    assert verdict.reply == expected


def test_a_refusal_without_smtp_message_leaves_the_reply_to_the_policy() -> None:
    assert parse(reply(action="reject", messages={})).reply is None


def test_score_required_and_symbols_are_reported() -> None:
    verdict = parse(reply(score=16.5, action="reject", symbols={"B": {"score": 1}, "A": {"score": 15.5}}))
    assert (verdict.score, verdict.required, verdict.rules, verdict.spam) == (16.5, 15.0, ("A", "B"), True)


def test_the_milter_block_adds_headers_in_rspamds_order() -> None:
    verdict = parse(reply(milter={"add_headers": {
        "X-Last": "plain string",
        "X-First": {"value": "zero", "order": 0},
        "X-Many": [{"value": "one", "order": 1}, {"value": "end"}],
    }}))
    assert verdict.headers == (("X-First", "zero"), ("X-Many", "one"), ("X-Last", "plain string"),
                               ("X-Many", "end"))


def test_removals_resolve_against_the_message() -> None:
    names = ["Received", "X-Spam", "DKIM-Signature", "x-spam", "DKIM-Signature", "X-SPAM"]
    verdict = parse(reply(milter={"remove_headers": {"X-Spam": 0, "DKIM-Signature": -1, "Absent": 0,
                                                     "Received": [1, 7, -9]}}), names)
    assert verdict.changes == (ChangeHeader("X-Spam", 3, ""), ChangeHeader("X-Spam", 2, ""),
                               ChangeHeader("X-Spam", 1, ""), ChangeHeader("DKIM-Signature", 2, ""),
                               ChangeHeader("Received", 1, ""))


def test_envelope_rewrites_and_custom_rejections() -> None:
    verdict = parse(reply(action="reject", milter={"change_from": "<new@example.org>", "add_rcpt": ["x@example.net"],
                                                   "del_rcpt": ["y@example.net"], "reject": "discard"}))
    assert verdict.action is Action.QUARANTINE
    assert verdict.changes == (ChangeSender("new@example.org"), AddRecipient("x@example.net"),
                               DeleteRecipient("y@example.net"))
    quiet = parse(reply(action="add header", milter={"no_action": True}))
    assert quiet.action is Action.NONE and ("X-Rspamd-Action", "add header") in quiet.headers


def test_rewrite_subject_and_skipped() -> None:
    assert parse(reply(action="rewrite subject", subject="[SPAM] hi")).subject == "[SPAM] hi"
    assert parse(reply(action="add header", subject="[SPAM] hi")).subject is None
    assert parse(reply(is_skipped=True)).skipped
    assert parse(reply(is_skipped=True, action="reject")).skipped is None  # GTUBE: decided, not skipped


@pytest.mark.parametrize(("document", "error"), [
    ([], "reply is a JSON array, not an object"),
    ({"error": "invalid command"}, "rspamd says: invalid command"),
    (reply(score=None), "no numeric score"),
    (reply(score=True), "no numeric score"),
    (reply(required_score="15"), "no numeric required_score"),
    (reply(score=float("nan")), "score is not a finite number"),
    (reply(score=10 ** 400), "score is not a finite number"),
    ({"score": 1, "required_score": 2}, "no action"),
    (reply(symbols=["A"]), "symbols are a JSON array"),
    (reply(symbols={"BAD\r\nX-Injected: 1": {}}), "is not printable ASCII"),
    (reply(messages="x"), "messages are a JSON string"),
    (reply(milter=[]), "milter block is a JSON array"),
    (reply(milter={"add_headers": {"Bad Name": "v"}}), "is not a header field name"),
    (reply(milter={"add_headers": {"X-A": 1}}), "add_headers 'X-A' is a JSON number"),
    (reply(milter={"add_headers": {"X-A": {"order": 1}}}), "has no text value"),
    (reply(milter={"remove_headers": {"X-A": "all"}}), "not an integer"),
    (reply(milter={"add_rcpt": "x@example.net"}), "add_rcpt is a JSON string, not an array"),
    (reply(milter={"change_from": "a b@example.org"}), "change_from is not an address"),
])
def test_malformed_replies_are_one_line_errors(document: object, error: str) -> None:
    with pytest.raises(ScanError) as caught:
        parse(document)
    assert str(caught.value).startswith(f"{WHERE}: ") and error in str(caught.value)


def test_header_values_lose_control_characters_but_keep_folds() -> None:
    verdict = parse(reply(milter={"add_headers": {"X-A": "one\r\n\ttwo\x00\x1b"}}))
    assert verdict.headers == (("X-A", "one\r\n\ttwo"),)


def test_header_names_are_read_up_to_the_body() -> None:
    data = b"From: a\r\nSubject: folded\r\n continued\r\nX-Spam: yes\r\n\r\nX-Spam: in the body\r\n"
    assert header_names(data) == ["From", "Subject", "X-Spam"]


def test_request_headers_carry_the_envelope_and_nothing_empty() -> None:
    request = scan_request(b"", sender="", recipients=("a@x", "b@y"), client=session(login=None, host_name=None))
    assert request_headers(request, None, "gw") == [("Ip", b"203.0.113.5"), ("From", b"<>"), ("Rcpt", b"a@x"),
                                                    ("Rcpt", b"b@y"), ("MTA-Name", b"gw")]
    request = scan_request(b"", client=session(login="alice"), queue_id="Q1")
    assert request_headers(request, "sid", "gw") == [
        ("Settings-ID", b"sid"), ("Ip", b"203.0.113.5"), ("Helo", b"mx.example.org"), ("From", b"a@example.org"),
        ("Rcpt", b"b@example.net"), ("User", b"alice"), ("Queue-Id", b"Q1"), ("MTA-Name", b"gw")]


# Property tests: whatever a peer sends, the parser answers a Verdict or a one-line ScanError, nothing else.

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
_actions = st.sampled_from(["no action", "add header", "rewrite subject", "greylist", "soft reject", "reject",
                            "discard", "quarantine"])
_names = st.lists(st.sampled_from(["X-Spam", "x-spam", "Received", "Subject", "DKIM-Signature"]), max_size=8)


def _one_line_error(call: Callable[[], Verdict]) -> Verdict | None:
    try:
        return call()
    except ScanError as exc:
        assert str(exc).startswith(f"{WHERE}: ") and "\n" not in str(exc) and "\r" not in str(exc)
        return None


@given(_json)
def test_any_json_is_a_verdict_or_a_scan_error(document: object) -> None:
    _one_line_error(lambda: parse(document))


@given(st.binary(max_size=200))
def test_any_bytes_are_a_verdict_or_a_scan_error(body: bytes) -> None:
    _one_line_error(lambda: decode_reply(body, "rspamd", WHERE))


@given(_actions, st.floats(allow_nan=False, allow_infinity=False), st.dictionaries(
    st.sampled_from(["symbols", "messages", "milter", "subject", "is_skipped"]), _json, max_size=5),
    st.fixed_dictionaries({}, optional={"add_headers": _json, "remove_headers": _json, "change_from": _json,
                                        "add_rcpt": _json, "del_rcpt": _json, "reject": _json,
                                        "no_action": _json}),
    _names)
def test_any_reply_shaped_json_is_a_verdict_or_a_scan_error(action: str, score: float, extra: dict[str, object],
                                                            milter: dict[str, object], names: list[str]) -> None:
    document = {"score": score, "required_score": 15, "action": action, **extra}
    if milter:
        document["milter"] = milter
    verdict = _one_line_error(lambda: parse(document, names))
    if verdict is not None:
        for name, value in verdict.headers:
            assert re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name) and "\x00" not in value
        assert verdict.reply is None or re.fullmatch(r"[45]\d\d [45]\.\d{1,3}\.\d{1,3} [\x20-\x7e]+", verdict.reply)


@given(_actions, st.text(max_size=120))
def test_a_refusals_reply_is_always_one_valid_line_of_its_class(action: str, text: str) -> None:
    verdict = parse(reply(action=action, messages={"smtp_message": text}))
    printable = re.sub(r"[\x00-\x1f\x7f]", " ", text).split()  # nothing printable: the policy's reply, not one
    if verdict.action in (Action.REJECT, Action.SOFT_REJECT, Action.GREYLIST) and printable:
        klass = "5" if verdict.action is Action.REJECT else "4"
        assert verdict.reply is not None
        assert re.fullmatch(rf"{klass}\d\d {klass}\.\d{{1,3}}\.\d{{1,3}} [\x20-\x7e]+", verdict.reply), verdict.reply
    else:
        assert verdict.reply is None


@given(_names, st.dictionaries(st.sampled_from(["X-Spam", "Received", "Absent"]),
                               st.integers(-10, 10) | st.lists(st.integers(-10, 10), max_size=4), max_size=3))
def test_removals_name_existing_fields_last_first(names: list[str], removals: dict[str, object]) -> None:
    verdict = parse(reply(milter={"remove_headers": removals}), names)
    by_name: dict[str, list[int]] = {}
    for change in verdict.changes:
        assert isinstance(change, ChangeHeader) and change.value == ""
        count = sum(1 for name in names if name.lower() == change.name.lower())
        assert 1 <= change.index <= count
        by_name.setdefault(change.name, []).append(change.index)
    for indexes in by_name.values():
        assert indexes == sorted(set(indexes), reverse=True)


@given(st.text(), st.text(), st.text(), st.text())
def test_request_header_values_never_break_a_line(ip: str, helo: str, login: str, sender: str) -> None:
    request = scan_request(b"", sender=sender, recipients=(sender,), client=session(ip=ip, host_name=helo,
                                                                                     login=login))
    for _, value in request_headers(request, helo, login):
        assert value and not re.search(rb"[\x00-\x1f\x7f]", value)
