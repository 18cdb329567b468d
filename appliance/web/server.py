"""The listeners of ``listen.web``: uvicorn serving the web application inside the service's event loop.

The sockets are bound here, all or none, before uvicorn starts, so that a port in use fails the start with the
address named (as the SMTP and IMAP listeners do). uvicorn's own signal handling is off: SIGTERM and SIGHUP
belong to the service (service/run.py), which stops this server with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator, Sequence

import uvicorn
from starlette.types import ASGIApp

from appliance.config import HostPort

log = logging.getLogger("appliance.web")


class _Embedded(uvicorn.Server):
    """uvicorn without its signal handlers: the service that embeds it decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    def __init__(self, app: ASGIApp, listen: Sequence[HostPort], tls: ssl.SSLContext | None) -> None:
        self.listen = tuple(listen)
        # access_log off: uvicorn's line per request would repeat what the console's audit log says better.
        self._config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None, proxy_headers=False,
                                      server_header=False, date_header=True, timeout_keep_alive=30,
                                      timeout_graceful_shutdown=5, h11_max_incomplete_event_size=64 * 1024)
        self._tls = tls
        self._server: _Embedded | None = None
        self._task: asyncio.Task[None] | None = None
        self.sockets: list[socket.socket] = []

    async def start(self) -> None:
        self.sockets = _bind(self.listen)
        config = self._config
        config.load()
        config.ssl = self._tls  # the service's certificate (config/tls.py), not files uvicorn would read
        server = self._server = _Embedded(config)
        self._task = asyncio.create_task(server.serve(sockets=self.sockets), name="web")
        while not server.started:
            if self._task.done():  # uvicorn gave up before it served: say why
                self._task.result()
                raise RuntimeError("the web server stopped before it started")
            await asyncio.sleep(0.01)
        for sock in self.sockets:
            log.info("web (HTTPS) listening on %s", sock.getsockname()[:2])

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for sock in self.sockets:
            sock.close()


def _bind(listen: Sequence[HostPort]) -> list[socket.socket]:
    """One listening socket per address, all or none: a failure closes those already bound and names the address."""
    bound: list[socket.socket] = []
    try:
        for hp in listen:
            family = socket.AF_INET6 if ":" in hp.host else socket.AF_INET
            try:
                sock = socket.create_server((hp.host, hp.port), family=family, backlog=1024)
            except OSError as exc:
                raise OSError(exc.errno, f"web: cannot listen on {hp}: {exc.strerror}") from None
            sock.setblocking(False)
            bound.append(sock)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def web_tls_context(base: ssl.SSLContext) -> ssl.SSLContext:
    """The service's TLS context with ALPN set to HTTP/1.1, the one protocol uvicorn speaks here."""
    base.set_alpn_protocols(["http/1.1"])
    return base
