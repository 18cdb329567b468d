"""The clamd client against a real clamd (tests/peers/clamd.py) and against hostile peers that are not clamd.

What an administrator relies on: a virus is named whether it is in the body, a base64 attachment or a zip; a
message clamd did not wholly scan (StreamMaxLength, its AlertExceedsMax limits) is never reported clean; a
clamd that is down or a peer that answers nonsense gives one line naming the address, never a hang; and a scan
the engine gives up on closes its connection.
"""

from __future__ import annotations

import asyncio
import gc
import io
import re
import socket
import struct
import warnings
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peers.clamd import EICAR, EICAR_FOUND, HDB_FILE, HDB_FOUND, MAX_RECURSION, STREAM_MAX_LENGTH, ClamdServer
from peers.named import free_port
from waits import wait_until_async

from appliance.config.model import HostPort, ScannerConfig, UnixSocket
from appliance.filters.clamd import (
    CHUNK,
    COMMAND,
    MAX_REPLY,
    STREAM_MAX_LENGTH_REPLY,
    BadReply,
    ClamdScanner,
    instream_frames,
    parse_reply,
)
from appliance.filters.scanner import ScanError, ScanRequest, Verdict
from appliance.smtp.protocol import Envelope, Session

NAME = "clamav"


def scanner_for(address: HostPort | UnixSocket) -> ClamdScanner:
    return ClamdScanner(ScannerConfig(type="clamav", address=address, name=NAME), "mx.example.test")


def request(data: bytes) -> ScanRequest:
    envelope = Envelope()
    envelope.mail_from = "sender@example.org"
    envelope.rcpt_tos = ["user@example.test"]
    envelope.content = data
    return ScanRequest(Session(("192.0.2.10", 40000), None), envelope, data, "mx.example.test",
                       recipients=("user@example.test",))


def message(body: str = "Hello, this is a plain message.\n",
            attachments: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    mail = EmailMessage()
    mail["From"] = "sender@example.org"
    mail["To"] = "user@example.test"
    mail["Subject"] = "test"
    mail.set_content(body)
    for filename, content in attachments:
        mail.add_attachment(content, maintype="application", subtype="octet-stream", filename=filename)
    return mail.as_bytes().replace(b"\n", b"\r\n")


def zipped(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


async def scan(address: HostPort | UnixSocket, data: bytes) -> Verdict:
    scanner = scanner_for(address)
    try:
        return await scanner.scan(request(data))
    finally:
        await scanner.close()


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, clamd: ClamdServer) -> HostPort | UnixSocket:
    return clamd.unix if request.param == "unix" else clamd.tcp


# --- the real clamd -----------------------------------------------------------------------------------------


async def test_a_clean_message_is_clean(address: HostPort | UnixSocket) -> None:
    verdict = await scan(address, message(attachments=(("report.pdf", b"%PDF-1.4 not really\n" * 50),)))
    assert verdict == Verdict(scanner=NAME)


async def test_eicar_in_the_body_is_found(address: HostPort | UnixSocket) -> None:
    verdict = await scan(address, message(body=f"Look:\n{EICAR.decode()}\n"))
    assert (verdict.virus, verdict.skipped) == (EICAR_FOUND, None)


async def test_eicar_as_a_base64_attachment_is_found(address: HostPort | UnixSocket) -> None:
    data = message(attachments=(("eicar.com", EICAR),))
    assert EICAR not in data  # only clamd's MIME decoder can see it
    verdict = await scan(address, data)
    assert verdict.virus == EICAR_FOUND


async def test_eicar_in_a_zip_attachment_is_found(address: HostPort | UnixSocket) -> None:
    verdict = await scan(address, message(attachments=(("invoice.zip", zipped("invoice.com", EICAR)),)))
    assert verdict.virus == EICAR_FOUND


async def test_the_md5_signed_file_is_found(address: HostPort | UnixSocket) -> None:
    verdict = await scan(address, message(attachments=(("tool.bin", HDB_FILE),)))
    assert verdict.virus == HDB_FOUND


async def test_a_message_larger_than_several_chunks_is_scanned_whole(address: HostPort | UnixSocket) -> None:
    # The virus sits in the last chunk: clamd saw every chunk, not only the first.
    filler = "".join(f"line {n} of the filler text, long enough to span chunks.\n" for n in range(6000))
    data = message(body=filler + EICAR.decode() + "\n")
    assert 3 * CHUNK < len(data) < STREAM_MAX_LENGTH
    assert (await scan(address, data)).virus == EICAR_FOUND


@pytest.mark.parametrize("size", [STREAM_MAX_LENGTH + 1, 8 * STREAM_MAX_LENGTH], ids=["just-over", "8-times"])
async def test_a_message_over_stream_max_length_is_skipped_not_clean(address: HostPort | UnixSocket,
                                                                    size: int) -> None:
    # Just over: clamd's reply comes after the whole stream was sent. Eight times: clamd closes while chunks
    # are still being sent, and its reply must still be read, not lost to the broken pipe.
    data = message(body=f"{EICAR.decode()}\n") + b"x" * size
    verdict = await scan(address, data)
    assert verdict.skipped == "larger than clamd's StreamMaxLength"
    assert verdict.virus is None


async def test_nested_archives_beyond_max_recursion_are_skipped_not_a_virus(clamd: ClamdServer) -> None:
    archive = zipped("readme.txt", b"innocent")
    for depth in range(MAX_RECURSION + 2):
        archive = zipped(f"level{depth}.zip", archive)
    verdict = await scan(clamd.unix, message(attachments=(("nested.zip", archive),)))
    assert verdict.virus is None
    assert verdict.skipped == "over clamd's MaxRecursion limit"
    assert verdict.detail == "Heuristics.Limits.Exceeded.MaxRecursion"


async def test_a_message_over_max_file_size_is_skipped_with_alert_exceeds_max(
        clamd_factory: Callable[..., ClamdServer]) -> None:
    # A MaxFileSize below StreamMaxLength: clamd stops at MaxFileSize, so the virus at the end goes unseen.
    data = message(body="filler\n" * 20_000 + EICAR.decode() + "\n")
    strict = clamd_factory(options={"MaxFileSize": "64K", "AlertExceedsMax": "yes"})
    verdict = await scan(strict.unix, data)
    assert (verdict.virus, verdict.skipped) == (None, "over clamd's MaxFileSize limit")
    # Why the Ansible role turns AlertExceedsMax on: without it clamd calls the unscanned message clean.
    lax = clamd_factory(options={"MaxFileSize": "64K", "AlertExceedsMax": "no"})
    assert await scan(lax.unix, data) == Verdict(scanner=NAME)


async def test_a_host_name_is_resolved_and_each_of_its_addresses_tried(clamd: ClamdServer) -> None:
    # localhost may resolve to ::1 first, where this clamd does not listen: the next address answers.
    verdict = await scan(HostPort("localhost", clamd.port), message(attachments=(("eicar.com", EICAR),)))
    assert verdict.virus == EICAR_FOUND


async def test_extended_detection_info_still_gives_the_signature_name(
        clamd_factory: Callable[..., ClamdServer]) -> None:
    server = clamd_factory(options={"ExtendedDetectionInfo": "yes"})
    verdict = await scan(server.unix, message(attachments=(("tool.bin", HDB_FILE),)))
    assert verdict.virus == HDB_FOUND


async def test_many_scans_at_once_each_get_their_own_answer(clamd: ClamdServer) -> None:
    clean, infected = message(), message(attachments=(("eicar.com", EICAR),))
    scanner = scanner_for(clamd.unix)
    verdicts = await asyncio.gather(*(scanner.scan(request(infected if n % 2 else clean)) for n in range(20)))
    assert [v.virus for v in verdicts] == [EICAR_FOUND if n % 2 else None for n in range(20)]


# --- clamd down ---------------------------------------------------------------------------------------------


async def test_nothing_listening_on_the_port_is_a_scan_error_naming_it() -> None:
    port = free_port(["127.0.0.1"])
    with pytest.raises(ScanError) as caught:
        await scan(HostPort("127.0.0.1", port), message())
    assert str(caught.value) == f"clamd at 127.0.0.1:{port}: cannot connect: Connection refused"


async def test_a_missing_socket_path_is_a_scan_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "clamd.ctl"
    with pytest.raises(ScanError) as caught:
        await scan(UnixSocket(path), message())
    assert str(caught.value) == f"clamd at unix:{path}: cannot connect: No such file or directory"


async def test_a_stale_socket_file_is_a_scan_error(tmp_path: Path) -> None:
    path = tmp_path / "clamd.ctl"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # what a killed clamd leaves behind: the file, nobody listening
    with pytest.raises(ScanError, match=r"^clamd at unix:.*: cannot connect: Connection refused$"):
        await scan(UnixSocket(path), message())


# --- hostile peers ------------------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A real asyncio server on a Unix socket or loopback TCP, answering as `handler` says; it records whether
    each connection ended (the client closed it) so a test can see that nothing is left open."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.open = 0
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.open -= 1


@pytest.fixture(params=["unix", "tcp"])
async def peer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[
        tuple[Peer, HostPort | UnixSocket]]]]:
    peers: list[Peer] = []

    async def start(handler: Handler) -> tuple[Peer, HostPort | UnixSocket]:
        peer = Peer(handler)
        address: HostPort | UnixSocket
        if request.param == "unix":
            path = tmp_path / f"peer{len(peers)}.sock"
            peer.server = await asyncio.start_unix_server(peer._serve, path=str(path))
            address = UnixSocket(path)
        else:
            peer.server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
            address = HostPort("127.0.0.1", peer.server.sockets[0].getsockname()[1])
        peers.append(peer)
        return peer, address

    yield start
    for peer in peers:
        assert peer.server is not None
        peer.server.close()
        await peer.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one INSTREAM request as clamd does; return the data."""
    assert await reader.readexactly(len(COMMAND)) == COMMAND
    data = bytearray()
    while size := struct.unpack("!L", await reader.readexactly(4))[0]:
        data += await reader.readexactly(size)
    return bytes(data)


def answering(reply: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
    return handler


@pytest.mark.parametrize(("reply", "error"), [
    (b"HELLO\0", "unexpected reply 'HELLO'"),
    (b"\xff\xfe\x00garbage\0", r"unexpected reply '\xff\xfe'"),
    (b"stream: OK\r\n\0", r"unexpected reply 'stream: OK\r\n'"),
    (b"stream:  FOUND\0", "unexpected reply 'stream:  FOUND'"),
    (b"stream: Can't allocate memory ERROR\0", "clamd reports an error: \"stream: Can't allocate memory ERROR\""),
    (b"UNKNOWN COMMAND\0", "unexpected reply 'UNKNOWN COMMAND'"),
    (b"stream: OK", "closed the connection after 'stream: OK'"),
    (b"", "closed the connection without a reply"),
], ids=["word", "binary", "line-break", "no-name", "clamd-error", "unknown-command", "no-nul", "nothing"])
async def test_a_reply_that_is_not_a_verdict_is_a_scan_error(peer, reply: bytes, error: str) -> None:
    server, address = await peer(answering(reply))
    with pytest.raises(ScanError) as caught:
        await scan(address, message())
    assert str(caught.value) == f"clamd at {address}: {error}"


async def test_an_endless_reply_is_cut_off(peer) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for _ in range(1024):  # 1 MiB at most, far past the client's limit
            writer.write(b"A" * 1024)
            await writer.drain()

    _, address = await peer(endless)
    with pytest.raises(ScanError) as caught:
        await scan(address, message())
    assert str(caught.value) == f"clamd at {address}: sent more than {MAX_REPLY} bytes without ending its reply"


async def test_a_peer_that_closes_after_the_command_is_a_scan_error(peer) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(COMMAND))

    _, address = await peer(hang_up)
    with pytest.raises(ScanError, match=rf"^clamd at {re.escape(str(address))}: (closed the connection without a "
                                        r"reply|connection lost (while sending the message|before the reply): .+)$"):
        await scan(address, message(body="x" * 300_000))


async def test_an_ok_before_the_message_was_wholly_sent_is_not_clean(peer) -> None:
    # Only StreamMaxLength's refusal may come before the end of the stream; an early OK says nothing of the
    # part clamd never read.
    async def early_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(COMMAND))
        writer.write(b"stream: OK\0")
        await writer.drain()

    _, address = await peer(early_ok)
    with pytest.raises(ScanError, match=rf"^clamd at {re.escape(str(address))}: connection lost while sending the "
                                        r"message \(.+\), then the reply 'stream: OK'$"):
        await scan(address, b"x" * (64 * 1024 * 1024))


@pytest.mark.parametrize("reads", [True, False], ids=["reads-and-never-answers", "never-reads"])
async def test_a_cancelled_scan_closes_its_connection(peer, reads: bool) -> None:
    # The engine's asyncio.wait_for(config.timeout) cancels a scan the peer never answers: the connection is
    # closed (the peer sees the end of the stream) and the client leaves no task behind.
    received = asyncio.Event()
    drain = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reads:
            await read_request(reader)
            received.set()
        else:
            received.set()
            await drain.wait()
        while await reader.read(65536):
            pass

    server, address = await peer(silent)
    scanner = scanner_for(address)
    body = message() if reads else b"x" * (16 * 1024 * 1024)
    before = asyncio.all_tasks()
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", ResourceWarning)
        # `caught` keeps the traceback, and with it the cancelled scan's frames, alive as an engine logging it
        # would: the connection must be closed by the scan itself, not by the garbage collector.
        with pytest.raises(TimeoutError) as caught:
            await asyncio.wait_for(scanner.scan(request(body)), timeout=0.2)
        assert received.is_set()
        drain.set()
        await wait_until_async(lambda: server.open == 0, what="the peer to see the connection closed")
        del caught
        gc.collect()
    assert server.connections == 1
    assert asyncio.all_tasks() <= before
    assert [str(w.message) for w in warned if issubclass(w.category, ResourceWarning)] == []


# --- the reply parser and the request encoder ---------------------------------------------------------------


def decode_frames(stream: bytes) -> bytes:
    """The data of an INSTREAM request, read as clamd reads it (clamd(8): length-prefixed chunks, then 0)."""
    assert stream.startswith(COMMAND)
    position, data = len(COMMAND), bytearray()
    while True:
        (size,) = struct.unpack_from("!L", stream, position)
        position += 4
        if size == 0:
            assert position == len(stream), "nothing may follow the zero-length chunk"
            return bytes(data)
        data += stream[position:position + size]
        position += size


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=2048))
def test_the_request_carries_the_message_exactly(data: bytes, chunk: int) -> None:
    frames = list(instream_frames(data, chunk))
    assert decode_frames(b"".join(frames)) == data
    assert all(len(frame) <= chunk + len(COMMAND) + 8 for frame in frames)


def test_a_small_message_is_one_send() -> None:
    assert list(instream_frames(b"hi")) == [COMMAND + b"\0\0\0\x02hi\0\0\0\0"]
    assert list(instream_frames(b"")) == [COMMAND + b"\0\0\0\0"]


_NAME = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)


@given(_NAME)
def test_a_found_signature_is_named(name: str) -> None:
    verdict = parse_reply(NAME, f"stream: {name} FOUND".encode())
    if name.startswith("Heuristics.Limits.Exceeded."):
        assert verdict.virus is None and verdict.skipped
    elif "(" in name and name.endswith(")"):  # may be ExtendedDetectionInfo's "(hash:size)", then cut off
        assert verdict.virus and name.startswith(verdict.virus)
    else:
        assert verdict.virus == name


@given(st.binary(max_size=200))
def test_any_reply_is_a_verdict_or_bad_reply(reply: bytes) -> None:
    try:
        verdict = parse_reply(NAME, reply)
    except BadReply as error:
        assert "\n" not in str(error)
        return
    # Only the three known shapes are verdicts; a clean verdict only for exactly "stream: OK".
    assert verdict.virus or verdict.skipped or reply == b"stream: OK"


def test_the_replies_of_clamd() -> None:
    assert parse_reply(NAME, b"stream: OK") == Verdict(scanner=NAME)
    assert parse_reply(NAME, b"stream: Win.Test.EICAR_HDB-1 FOUND").virus == "Win.Test.EICAR_HDB-1"
    assert parse_reply(NAME, b"stream: Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68) FOUND").virus == (
        "Eicar-Signature")
    limits = parse_reply(NAME, b"stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND")
    assert (limits.virus, limits.skipped) == (None, "over clamd's MaxScanSize limit")
    too_long = parse_reply(NAME, STREAM_MAX_LENGTH_REPLY.encode())
    assert (too_long.virus, too_long.skipped) == (None, "larger than clamd's StreamMaxLength")
