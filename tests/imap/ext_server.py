"""The real IMAP server of tests/imap/conftest.py, bound in the imapext address range (127.0.56.0/24), for
the extension tests (tests/imap/test_ext_*.py), so that they run beside the other suites' servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imap.conftest import ImapServer, RawClient, run_server

HOST = "127.0.56.1"


@pytest.fixture
def ext_server(tmp_path: Path) -> Iterator[ImapServer]:
    yield from run_server(tmp_path, host=HOST, users=("alice@example.org",))


@pytest.fixture
def ext_raw(ext_server: ImapServer) -> Iterator[RawClient]:
    """A logged-in byte-level client."""
    client = RawClient(ext_server.host, ext_server.port)
    client.login()
    yield client
    client.close()
