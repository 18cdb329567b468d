"""The benchmarks' own SMTP load: asyncio clients, one message per session, each timed from its final dot to the
reply (the time to 250, which holds every check a server runs before it answers).

Shared by scan_throughput.py and auth_throughput.py. Each session may come from its own loopback source address
(`sources`, taken in turn), as an MX's clients do, so that per-client checks (DNSBL, SPF, iprev) see many.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from smtp_throughput import BenchError

HELO = "load.source.example"


@dataclass
class Sent:
    """One SMTP transaction as the client saw it: the reply to the end of data and how long it took."""

    reply: str  # the end-of-data reply ("250 ..."), or what failed before it ("RCPT: 554 ...", "connect: ...")
    latency: float = 0.0  # seconds from the final dot to the reply

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("250")


async def _reply(reader: asyncio.StreamReader) -> str:
    """One SMTP reply, multi-line ones joined (RFC 5321 §4.2.1: the last line has a space after the code)."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line.decode(errors="replace").rstrip())
        if len(line) < 4 or line[3:4] != b"-":
            return " / ".join(lines)


async def send_one(address: str, port: int, message: bytes, rcpt: str, sender: str, helo: str = HELO,
                   source: str | None = None) -> Sent:
    """One message in its own session; the clock runs from writing the final ".\\r\\n" to the reply."""
    try:
        reader, writer = await asyncio.open_connection(address, port,
                                                       local_addr=(source, 0) if source is not None else None)
    except OSError as exc:
        return Sent(f"connect: {exc}")
    try:
        steps = [(None, "220"), (f"EHLO {helo}\r\n".encode(), "250"), (f"MAIL FROM:<{sender}>\r\n".encode(), "250"),
                 (f"RCPT TO:<{rcpt}>\r\n".encode(), "250"), (b"DATA\r\n", "354")]
        for command, want in steps:
            if command is not None:
                writer.write(command)
            reply = await _reply(reader)
            if not reply.startswith(want):
                return Sent(f"{(command or b'banner').split(b' ')[0].decode().strip()}: {reply}")
        # RFC 5321 §4.5.2: a line starting with "." gets another one.
        data = message.replace(b"\r\n.", b"\r\n..")
        writer.write(data if data.endswith(b"\r\n") else data + b"\r\n")
        await writer.drain()
        start = time.perf_counter()
        writer.write(b".\r\n")
        reply = await _reply(reader)
        sent = Sent(reply, time.perf_counter() - start)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return sent
    except (OSError, ConnectionError) as exc:
        return Sent(f"session: {exc}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _load(address: str, port: int, messages: list[bytes], sessions: int, rcpt: str, sender: str, helo: str,
                sources: Sequence[str | None]) -> list[Sent]:
    results: list[Sent] = []
    todo = iter(messages)
    source = itertools.cycle(sources)

    async def client() -> None:
        for message in todo:  # the shared iterator hands each message to one client
            results.append(await send_one(address, port, message, rcpt, sender, helo, next(source)))

    await asyncio.gather(*(client() for _ in range(sessions)))
    return results


def run_client(address: str, port: int, messages: list[bytes], sessions: int, timeout: float, *, rcpt: str,
               sender: str, helo: str = HELO, sources: Sequence[str | None] = (None,)) -> list[Sent]:
    """Send `messages`, `sessions` at a time, each in its own session; raises BenchError past `timeout`."""
    async def bounded() -> list[Sent]:
        return await asyncio.wait_for(_load(address, port, messages, sessions, rcpt, sender, helo, sources), timeout)

    try:
        return asyncio.run(bounded())
    except TimeoutError as exc:
        raise BenchError(f"the load did not finish within {timeout:.0f}s") from exc
