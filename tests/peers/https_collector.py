"""A real HTTPS server on loopback that records every POST (path, headers, body) and answers as scripted.

Use as a pytest plugin for the `https_collector` fixture: `https_collector(tmp_path, address)` -> a running
Collector with a self-signed certificate for its address (tests/peers/tls.py); point clients at `ca_file`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .named import free_port
from .tls import self_signed_cert


@dataclass(frozen=True)
class Posted:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Collector:
    address: str
    port: int
    ca_file: Path
    server: ThreadingHTTPServer = field(repr=False)
    posts: list[Posted] = field(default_factory=list)
    status: int = 200  # the answer to every POST

    def url(self, path: str) -> str:
        return f"https://{self.address}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_collector(directory: Path, address: str = "127.0.0.1") -> Collector:
    pair = self_signed_cert(directory, address, (address,))
    port = free_port([address])
    collector: Collector

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            collector.posts.append(Posted(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(collector.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((address, port), Handler)
    server.socket = pair.server_context().wrap_socket(server.socket, server_side=True)
    collector = Collector(address, port, pair.cert, server)
    threading.Thread(target=server.serve_forever, name="https-collector", daemon=True).start()
    return collector


@pytest.fixture
def https_collector() -> Iterator[Callable[..., Collector]]:
    collectors: list[Collector] = []

    def start(directory: Path, address: str = "127.0.0.1") -> Collector:
        collector = start_collector(directory, address)
        collectors.append(collector)
        return collector

    yield start
    for collector in collectors:
        collector.stop()
