"""The control socket: how `mailfleet queue flush|delete|bounce` reach the running queue.

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
from pathlib import Path
from typing import Any

from appliance.queue.runner import QueueRunner

log = logging.getLogger("appliance.queue")


class ControlServer:
    def __init__(self, path: Path, runner: QueueRunner) -> None:
        self.path = path
        self.runner = runner
        self._server: asyncio.AbstractServer | None = None

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
        if command == "ping":
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}


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
