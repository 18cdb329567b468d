"""The real IMAP server of tests/imap/conftest.py, bound in the imapext address range (127.0.56.0/24), for
the extension tests (tests/imap/test_ext_*.py), so that they run beside the other suites' servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.tls import self_signed_cert

from appliance.imap.server import start_imap
from appliance.store import MailStore
from tests.imap.conftest import Argon2Authenticator, ImapServer, RawClient

HOST = "127.0.56.1"


@pytest.fixture
def ext_server(tmp_path: Path) -> Iterator[ImapServer]:
    cert = self_signed_cert(tmp_path / "tls", "localhost", (HOST,))
    store = MailStore(tmp_path / "mail")
    auth = Argon2Authenticator()
    auth.add("alice@example.org", "s3cret pass")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = asyncio.run_coroutine_threadsafe(
        start_imap([(HOST, 0)], [(HOST, 0)], store, auth, cert.server_context(), "imap.example.org", True),
        loop).result(10)
    server = ImapServer(HOST, servers[0].sockets[0].getsockname()[1], servers[1].sockets[0].getsockname()[1],
                        store, auth, cert, loop, servers)
    try:
        yield server
    finally:
        async def stop() -> None:
            for s in servers:
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()


@pytest.fixture
def ext_raw(ext_server: ImapServer) -> Iterator[RawClient]:
    """A logged-in byte-level client."""
    client = RawClient(ext_server.host, ext_server.port)
    client.login()
    yield client
    client.close()
