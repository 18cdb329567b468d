"""IMAP framing on one connection: command lines with their literals in, buffered responses out.

A command is read as one unit: each line ending in a literal announcement (``{n}`` or, with
LITERAL+, ``{n+}``) is followed by that many octets and more of the command (RFC 3501 §4.3,
RFC 7888). Responses are collected as latin-1 ``str`` lines (see ``response``) and written in one
go when the command is done, or earlier when a large FETCH has filled the buffer.
"""

from __future__ import annotations

import asyncio
import re
import ssl

from appliance.imap.parser import parse_tag
from appliance.imap.response import encode

MAX_LINE = 64 * 1024
MAX_LITERAL = 64 * 1024 * 1024
MAX_COMMAND = 72 * 1024 * 1024
FLUSH_AT = 256 * 1024  # buffered response characters that make ``maybe_flush`` write
TIMEOUT_PREAUTH = 180.0
TIMEOUT_AUTH = 30 * 60.0  # RFC 3501 §5.4: at least 30 minutes
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}$")


class Disconnect(Exception):
    """End the connection (after LOGOUT, or a fatal protocol error already answered)."""


class Wire:
    """The connection's byte stream: reads commands and continuation lines, buffers and writes responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._out: list[str] = []
        self._out_size = 0

    def peer_ip(self) -> str:
        peer = self.writer.get_extra_info("peername") or ("unknown", 0)
        return str(peer[0])

    # ------------------------------------------------------------------ output

    def send(self, line: str) -> None:
        """Queue one response line (without its CRLF)."""
        self._out.append(line)
        self._out.append("\r\n")
        self._out_size += len(line)

    async def flush(self) -> None:
        if self._out:
            data = encode("".join(self._out))
            self._out.clear()
            self._out_size = 0
            self.writer.write(data)
            await self.writer.drain()

    async def maybe_flush(self) -> None:
        """Write when the buffer has grown large (a long FETCH), so that memory stays bounded."""
        if self._out_size > FLUSH_AT:
            await self.flush()

    async def continuation(self, text: str) -> None:
        """A continuation request (RFC 3501 §7.5), written at once: the client waits for it."""
        self.send(f"+ {text}")
        await self.flush()

    # ------------------------------------------------------------------ input

    async def readline(self, timeout: float) -> bytes:
        """One line with its line end; BYE and Disconnect on a too-long line, EOF or inactivity."""
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), timeout)
        except asyncio.LimitOverrunError:
            self.send("* BYE Line too long")
            await self.flush()
            raise Disconnect from None
        except asyncio.IncompleteReadError:
            raise Disconnect from None
        except TimeoutError:
            self.send("* BYE Disconnected for inactivity")
            await self.flush()
            raise Disconnect from None
        return line

    async def read_command(self, timeout: float) -> bytes | None:
        """Read one command, inlining literals (RFC 3501 §4.3, RFC 7888 LITERAL+).

        None when a synchronising literal was refused as too big (the client then sends nothing more
        of that command)."""
        buf = bytearray()
        while True:
            line = await self.readline(timeout)
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            buf += line
            match = _LITERAL_AT_END.search(line)
            if not match:
                return bytes(buf)
            size = int(match.group(1))
            sync = not match.group(2)
            if size > MAX_LITERAL or len(buf) + size > MAX_COMMAND:
                tag = parse_tag(bytes(buf)) or "*"
                if sync:
                    # RFC 7889 TOOBIG-like refusal: the client will not send the data
                    self.send(f"{tag} NO [TOOBIG] Literal larger than {MAX_LITERAL} octets")
                    await self.flush()
                    return None
                self.send("* BYE Literal too big")
                await self.flush()
                raise Disconnect
            if sync:
                await self.continuation("OK")
            try:
                data = await asyncio.wait_for(self.reader.readexactly(size), timeout)
            except (asyncio.IncompleteReadError, TimeoutError):
                raise Disconnect from None
            buf += b"\r\n" + data

    def next_line(self) -> asyncio.Task[bytes]:
        """A task reading the next line, for waits that race it against other events (IDLE's DONE)."""
        return asyncio.ensure_future(self.reader.readuntil(b"\n"))

    # ------------------------------------------------------------------ TLS and close

    def drop_pipelined(self) -> None:
        """Forget input already received: after STARTTLS's OK nothing sent in plaintext may count
        (RFC 3501 §6.2.1, RFC 2595 §3.1: plaintext command injection)."""
        buffered = getattr(self.reader, "_buffer", None)
        if buffered:
            buffered.clear()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        await self.writer.start_tls(context)

    def close(self) -> None:
        self.writer.close()
