"""A clamd client: each message goes over its own connection as one INSTREAM (clamd(8), COMMANDS).

The exchange is ``zINSTREAM\\0``, then the message in chunks, each prefixed by its length as a 4-byte unsigned
integer in network byte order, then a zero-length chunk; clamd answers one line ended by NUL (the ``z`` prefix
asks for that terminator) and closes the connection:

- ``stream: OK``: clamd scanned the message and found nothing.
- ``stream: <signature> FOUND``: a signature matched. ``Heuristics.Limits.Exceeded.*`` is not a virus but
  clamd's AlertExceedsMax (clamd.conf(5)): a MaxFileSize, MaxScanSize, MaxRecursion, MaxFiles or
  MaxScanTime limit stopped the scan, so part of the message went unscanned.
- ``INSTREAM size limit exceeded. ERROR``: the stream was longer than StreamMaxLength; clamd stops reading,
  answers and closes, and the message was not scanned.
- anything else ending in ``ERROR`` is clamd failing (out of memory, a bad command) and is a ScanError.

The client uses the event loop's socket calls (``loop.sock_sendall`` / ``loop.sock_recv``) on a socket it
owns, not asyncio streams: when clamd closes after StreamMaxLength while chunks are still on their way, the
next send fails with EPIPE, an asyncio transport then drops the connection and its reader raises instead of
returning clamd's reply, which is still in the socket's receive queue. Reading the socket directly recovers
that reply, so a message over StreamMaxLength is reported as skipped, never as an error nor as clean.

No timeout is applied here: the filter engine wraps every scan in ``asyncio.wait_for(config.timeout)``, and a
cancelled scan closes its socket on the way out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterator

from appliance.config.model import HostPort, ScannerConfig, UnixSocket
from appliance.filters.scanner import ScanError, ScanRequest, Verdict

COMMAND = b"zINSTREAM\0"
CHUNK = 64 * 1024  # bytes of the message per INSTREAM chunk; StreamMaxLength counts the data, not the chunks
MAX_REPLY = 4096  # clamd's reply is one short line; a peer that sends more than this is not clamd
STREAM_MAX_LENGTH_REPLY = "INSTREAM size limit exceeded. ERROR"
LIMITS_EXCEEDED = "Heuristics.Limits.Exceeded."
SHOWN = 200  # characters of a bad reply quoted in an error

_FOUND = re.compile(r"stream: (?P<name>\S(?:.*\S)?) FOUND")
# ExtendedDetectionInfo yes appends the matched hash and size: "Name(0123...ef:4096)".
_EXTENDED = re.compile(r"(?P<name>.+)\((?P<info>[0-9a-fA-F]+:\d+)\)")


class BadReply(ValueError):
    """clamd's reply is not one this client understands, or reports an error; str() is one line."""


def instream_frames(data: bytes, chunk: int = CHUNK) -> Iterator[bytes]:
    """The whole INSTREAM request as pieces of at most ``chunk`` + 14 bytes: the command travels with the first
    chunk and the zero-length terminator with the last, so a small message is a single send."""
    view = memoryview(data)
    prefix = COMMAND
    for start in range(0, len(view), chunk):
        piece = view[start:start + chunk]
        end = b"\0\0\0\0" if start + chunk >= len(view) else b""
        yield b"".join((prefix, struct.pack("!L", len(piece)), piece, end))
        prefix = b""
    if not view:
        yield COMMAND + b"\0\0\0\0"


def parse_reply(scanner: str, reply: bytes) -> Verdict:
    """The Verdict for clamd's reply to INSTREAM (without its NUL); BadReply for anything but a verdict."""
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        raise BadReply(f"unexpected reply {_shown(reply)}") from None
    if not text.isprintable():
        raise BadReply(f"unexpected reply {_shown(reply)}")
    if text == "stream: OK":
        return Verdict(scanner=scanner)
    if text == STREAM_MAX_LENGTH_REPLY:
        return Verdict(scanner=scanner, skipped="larger than clamd's StreamMaxLength", detail=text)
    found = _FOUND.fullmatch(text)
    if found:
        name = found["name"]
        extended = _EXTENDED.fullmatch(name)
        if extended:
            name = extended["name"]
        if name.startswith(LIMITS_EXCEEDED):
            limit = name.removeprefix(LIMITS_EXCEEDED)
            return Verdict(scanner=scanner, skipped=f"over clamd's {limit} limit", detail=name)
        return Verdict(scanner=scanner, virus=name)
    if text.endswith(" ERROR"):
        raise BadReply(f"clamd reports an error: {_shown(text)}")
    raise BadReply(f"unexpected reply {_shown(text)}")


def _shown(reply: bytes | str) -> str:
    """A bad reply quoted on one line: repr escapes control characters and line breaks (bytes lose the b)."""
    quoted = repr(reply[:SHOWN])
    return (quoted[1:] if isinstance(reply, bytes) else quoted) + ("..." if len(reply) > SHOWN else "")


class ClamdScanner:
    """A Scanner asking clamd (clamav-daemon) over TCP or its Unix socket, one connection per message.

    clamd serves each connection from its thread pool (MaxThreads) and queues up to MaxQueue, so parallel
    scans need no client-side pool. A pool of IDSESSION connections saves the connect: measured with 5 KB
    messages over the Unix socket, it gained nothing beyond the noise at 8 scans at once (4,900 scans/s either
    way) and up to twice the rate one scan at a time (3,200 against 1,650/s), both far above what the SMTP side
    accepts. It would cost a session protocol (numbered replies, sessions clamd ends on IdleTimeout or
    StreamMaxLength, a session a cancelled scan leaves mid-stream and unusable), so there is none."""

    def __init__(self, config: ScannerConfig, hostname: str) -> None:
        self.name = config.name
        self._address = config.address
        # `hostname` is part of every scanner's constructor; clamd's protocol carries no host name.

    async def scan(self, request: ScanRequest) -> Verdict:
        try:
            sock = await _connect(self._address)
        except OSError as error:
            raise self._error(f"cannot connect: {_reason(error)}") from None
        loop = asyncio.get_running_loop()
        try:
            sent = await self._send(loop, sock, request.data)
            reply = await self._receive(loop, sock, sent)
            try:
                verdict = parse_reply(self.name, reply)
            except BadReply as error:
                raise self._error(str(error)) from None
            if sent is not None and reply != STREAM_MAX_LENGTH_REPLY.encode():
                # Never a verdict on a message clamd did not wholly receive: only its StreamMaxLength reply
                # comes before the end of the stream.
                raise self._error(f"connection lost while sending the message ({_reason(sent)}), "
                                  f"then the reply {_shown(reply)}")
            return verdict
        finally:
            _close(loop, sock)

    async def close(self) -> None:
        """Nothing to release: every scan closes its own connection."""

    async def _send(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes) -> OSError | None:
        """Send the request; the OSError that cut it short (clamd closes at StreamMaxLength), else None."""
        try:
            for frame in instream_frames(data):
                await loop.sock_sendall(sock, frame)
        except OSError as error:
            return error
        return None

    async def _receive(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                       sent: OSError | None) -> bytes:
        """clamd's reply up to its NUL, at most MAX_REPLY bytes."""
        reply = bytearray()
        lost: OSError | None
        while True:
            try:
                data = await loop.sock_recv(sock, MAX_REPLY + 1 - len(reply))
            except OSError as error:
                data, lost = b"", error
            else:
                lost = None
            if not data:
                if sent is not None:
                    raise self._error(f"connection lost while sending the message: {_reason(sent)}")
                if lost is not None:
                    raise self._error(f"connection lost before the reply: {_reason(lost)}")
                what = f"after {_shown(bytes(reply))}" if reply else "without a reply"
                raise self._error(f"closed the connection {what}")
            reply += data
            end = reply.find(b"\0")
            if end >= 0:
                return bytes(reply[:end])
            if len(reply) > MAX_REPLY:
                raise self._error(f"sent more than {MAX_REPLY} bytes without ending its reply")

    def _error(self, what: str) -> ScanError:
        return ScanError(f"clamd at {self._address}: {what}")


async def _connect(address: HostPort | UnixSocket) -> socket.socket:
    """A connected non-blocking socket to clamd; the last OSError when no address of it answers."""
    loop = asyncio.get_running_loop()
    targets: list[tuple[int, str | tuple[str, int]]]
    if isinstance(address, UnixSocket):
        targets = [(socket.AF_UNIX, str(address.path))]
    else:
        try:
            version = ipaddress.ip_address(address.host).version
            targets = [(socket.AF_INET6 if version == 6 else socket.AF_INET, (address.host, address.port))]
        except ValueError:  # a host name
            infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            targets = [(info[0], info[4][:2]) for info in infos]
    failure = OSError(f"{address} has no address")
    for family, sockaddr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                # The request is written in pieces and then the reply awaited: Nagle's algorithm would hold
                # the last piece back until the previous one is acknowledged.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
            return sock
        except OSError as error:
            sock.close()
            failure = error
        except BaseException:  # cancelled while connecting
            _close(loop, sock)
            raise
    raise failure


def _close(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Close the socket, first taking it off the loop: a cancelled sock_* call leaves its fd registered until
    its done-callback runs, and the closed fd's number may already belong to another connection by then."""
    if sock.fileno() >= 0:
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
    sock.close()


def _reason(error: OSError) -> str:
    """An OSError as a short phrase ("Connection refused"): the text of its errno, as asyncio's sock_connect
    replaces strerror with "Connect call failed ..."; a resolver error's own text (its errno is an EAI code)."""
    if error.errno and not isinstance(error, socket.gaierror):
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__
