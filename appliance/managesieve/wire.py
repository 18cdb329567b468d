"""ManageSieve framing on one connection: commands with their literals in, response bytes out.

A command is read as one unit: a line that ends in a literal announcement (``{n+}``, or ``{n}`` which is taken
the same way) is followed by that many octets and by the rest of the command (RFC 5804 §4). A literal larger
than the script limit is read and dropped, so that the client's next command is found where it starts, and the
command is answered NO (QUOTA/MAXSIZE, RFC 5804 §2.6); past ``MAX_DISCARD`` the connection is closed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

from appliance.managesieve.response import status

MAX_LINE = 64 * 1024
MAX_DISCARD = 64 * 1024 * 1024
TIMEOUT_PREAUTH = 180.0
TIMEOUT_AUTH = 30 * 60.0
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})\+?\}$")


class Disconnect(Exception):
    """End the connection (after LOGOUT, or a fatal error already answered)."""


@dataclass(frozen=True)
class Received:
    raw: bytes  # the command, literals inlined (see parser); only its first line when oversized
    oversized: bool = False  # a literal was over the limit and dropped


class Wire:
    """The connection's byte stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._out: list[bytes] = []

    def peer_ip(self) -> str:
        peer = self.writer.get_extra_info("peername") or ("unknown", 0)
        return str(peer[0])

    def send(self, data: bytes) -> None:
        self._out.append(data)

    async def flush(self) -> None:
        if self._out:
            self.writer.write(b"".join(self._out))
            self._out.clear()
            await self.writer.drain()

    async def bye(self, text: str) -> None:
        self.send(status("BYE", text))
        await self.flush()
        raise Disconnect

    async def readline(self, timeout: float) -> bytes:
        """One line without its line end; BYE on a too-long line, Disconnect on EOF or inactivity."""
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), timeout)
        except asyncio.LimitOverrunError:
            await self.bye("Line too long")
        except asyncio.IncompleteReadError:
            raise Disconnect from None
        except TimeoutError:
            await self.bye("Disconnected for inactivity")
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    async def read_command(self, timeout: float, max_literal: int) -> Received:
        buf = bytearray()
        while True:
            line = await self.readline(timeout)
            buf += line
            match = _LITERAL_AT_END.search(line)
            if not match:
                return Received(bytes(buf))
            size = int(match.group(1))
            if size > max_literal:
                first = bytes(buf)
                await self._discard(size, timeout)
                await self._discard_rest(timeout, max_literal)
                return Received(first, oversized=True)
            try:
                data = await asyncio.wait_for(self.reader.readexactly(size), timeout)
            except (asyncio.IncompleteReadError, TimeoutError):
                raise Disconnect from None
            buf += b"\r\n" + data

    async def _discard(self, size: int, timeout: float) -> None:
        if size > MAX_DISCARD:
            await self.bye(f"Literal larger than {MAX_DISCARD} octets")
        while size:
            try:
                chunk = await asyncio.wait_for(self.reader.read(min(size, 65536)), timeout)
            except TimeoutError:
                raise Disconnect from None
            if not chunk:
                raise Disconnect
            size -= len(chunk)

    async def _discard_rest(self, timeout: float, max_literal: int) -> None:
        """The rest of the oversized command (normally an empty line after the literal)."""
        line = await self.readline(timeout)
        match = _LITERAL_AT_END.search(line)
        if match:
            await self._discard(int(match.group(1)), timeout)
            await self._discard_rest(timeout, max_literal)

    def drop_pipelined(self) -> None:
        """Forget input already received: nothing sent in plaintext before the TLS handshake may count
        (RFC 5804 §2.2, as RFC 2595 §3.1 for IMAP: plaintext command injection)."""
        buffered = getattr(self.reader, "_buffer", None)
        if buffered:
            buffered.clear()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        await self.writer.start_tls(context)

    def close(self) -> None:
        self.writer.close()
