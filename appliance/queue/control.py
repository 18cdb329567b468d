"""The control socket: how `mailfleet queue flush|delete|bounce` and `mailfleet quarantine release` reach the
running queue.

A Unix socket under data_dir (mode 0600, so only root and the service user), one JSON request per connection,
one JSON answer. The spool files stay the source of truth; the socket only asks the runner to act now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.message.model import QueuedMessage
from appliance.quarantine.store import Quarantine, QuarantineError
from appliance.queue.runner import QueueRunner
from appliance.queue.spool import Spool

log = logging.getLogger("appliance.queue")


class ControlServer:
    def __init__(self, path: Path, runner: QueueRunner, quarantine: Quarantine | None = None) -> None:
        self.path = path
        self.runner = runner
        self.quarantine = quarantine
        self._server: asyncio.AbstractServer | None = None
        # Requests of parts above the queue (e.g. TLS-RPT's "tls-reports-send"), registered by the service.
        self.commands: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                request = json.loads(line)
                answer = await self._handle(request)
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["cmd"]
        queue_id: str | None = request.get("id")
        if command == "flush":
            count = self.runner.flush(queue_id)
            if queue_id and not count:
                return {"ok": False, "error": f"no message {queue_id} in the queue"}
            return {"ok": True, "count": count}
        if command == "delete":
            if self.runner.drop(queue_id or ""):
                return {"ok": True}
            return {"ok": False, "error": f"no message {queue_id} in the queue (or it is being delivered)"}
        if command == "bounce":
            if await self.runner.bounce_now(queue_id or ""):
                return {"ok": True}
            return {"ok": False, "error": f"no message {queue_id} in the queue (or it is being delivered)"}
        if command == "release":
            return await self._release(queue_id or "")
        if command == "ping":
            return {"ok": True}
        if command in self.commands:
            return await self.commands[command](request)
        return {"ok": False, "error": f"unknown command {command!r}"}

    async def _release(self, queue_id: str) -> dict[str, Any]:
        """A quarantined message into the spool, and to the runner at once (as a message an acceptor committed)."""
        if self.quarantine is None:
            return {"ok": False, "error": "this server keeps no quarantine"}
        try:
            message = await release_into_spool(self.quarantine, queue_id, self.runner.spool)
        except QuarantineError as exc:
            return {"ok": False, "error": str(exc)}
        except OSError as exc:
            log.error("queue_id=%s: release from the quarantine failed: %s", queue_id, exc)
            return {"ok": False, "error": f"{queue_id}: cannot release: {exc.strerror or exc}"}
        if not self.runner.knows(message.queue_id):  # known: an earlier release was cut short after the spool
            self.runner.adopt(message)
        log.info("queue_id=%s released from the quarantine by the administrator: rcpts=%d", message.queue_id,
                 len(message.recipients))
        return {"ok": True, "recipients": len(message.recipients)}


async def release_into_spool(quarantine: Quarantine, queue_id: str, spool: Spool) -> QueuedMessage:
    """Release a held message into ``spool``: its commit (file, rename, group flush) is durable before the
    quarantine lets go of it (see ``Quarantine.release``). Here and not in quarantine/, which sits below the
    queue. Used by the running server and, with none running, by the command itself."""
    return await quarantine.release(queue_id, spool.commit)


def request(path: Path, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """Send one request to a running server; None when no server listens on `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    with sock:
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data) if data else {"ok": False, "error": "no answer from the server"}
