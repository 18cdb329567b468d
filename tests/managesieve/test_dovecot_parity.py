"""The same ManageSieve transcript against Mailfleet and Debian's Dovecot managesieved (Pigeonhole 0.5): every
response's kind (OK, NO, BYE), its response code (RFC 5804 §1.3) and its data lines agree. The human texts
differ, and so do the checkers' messages, which are compared only for a line number."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.managesieve.conftest import BAD, GOOD, PASSWORD, Raw
from tests.managesieve.dovecot_peer import ADDRESS as DOVECOT_ADDRESS
from tests.managesieve.dovecot_peer import DOVECOT, start_managesieved

pytestmark = pytest.mark.skipif(not Path(DOVECOT).exists() or not Path("/usr/lib/dovecot/managesieve").exists(),
                                reason="make apt installs dovecot-managesieved")

GOOD2 = GOOD + "keep;\r\n"


def literal(text: str) -> bytes:
    data = text.encode()
    return b"{%d+}\r\n" % len(data) + data


TRANSCRIPT = [
    b'PUTSCRIPT "a" ' + literal(GOOD),
    b'PUTSCRIPT "broken" ' + literal(BAD),
    b"LISTSCRIPTS",
    b'SETACTIVE "a"',
    b"LISTSCRIPTS",
    b'GETSCRIPT "a"',
    b'GETSCRIPT "nonesuch"',
    b'SETACTIVE "nonesuch"',
    b'DELETESCRIPT "a"',
    b'DELETESCRIPT "nonesuch"',
    b'RENAMESCRIPT "a" "main"',
    b"LISTSCRIPTS",
    b'PUTSCRIPT "b" ' + literal(GOOD2),
    b'RENAMESCRIPT "b" "main"',
    b'RENAMESCRIPT "nonesuch" "x"',
    b'HAVESPACE "c" 100',
    b'HAVESPACE "c" 999999',
    b'PUTSCRIPT "c" ' + literal(GOOD),
    b'PUTSCRIPT "d" ' + literal(GOOD),
    b'HAVESPACE "d" 100',
    b'PUTSCRIPT "c" ' + literal(GOOD2),
    b"CHECKSCRIPT " + literal(GOOD),
    b"CHECKSCRIPT " + literal(BAD),
    b'NOOP "tag1"',
    b'SETACTIVE ""',
    b"LISTSCRIPTS",
    b'DELETESCRIPT "main"',
    b"LISTSCRIPTS",
    b"LOGOUT",
]  # not UNAUTHENTICATE: optional (RFC 5804 §2.14), Dovecot 2.3 lacks it; test_protocol.py covers ours

_CODE = re.compile(rb"^(OK|NO|BYE)(?: \(([^)]*)\))?")


def shape(lines: list[bytes]) -> tuple:
    """The comparable part of a response: the data lines, the status line's kind and code; for a checker's NO
    only whether it names a line."""
    *data, last = lines
    match = _CODE.match(last)
    assert match, last
    kind, code = match.group(1), match.group(2)
    names_line = bool(re.search(rb"line \d+", last)) if kind == b"NO" and code is None else None
    return tuple(sorted(data)), kind, code, names_line  # LISTSCRIPTS has no order (RFC 5804 §2.7)


class Peer(Raw):
    """``Raw`` for any server address (the conftest's is Mailfleet's)."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.create_connection((address, port), timeout=30)
        self.file = self.sock.makefile("rb")


def run(address: str, port: int, user: str) -> list[tuple]:
    client = Peer(address, port)
    try:
        client.response()
        login = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        assert client.command(b'AUTHENTICATE "PLAIN" "' + login + b'"')[-1].startswith(b"OK")
        return [shape(client.command(command)) for command in TRANSCRIPT]
    finally:
        client.close()


@pytest.fixture
def dovecot(user: str) -> Iterator[int]:
    base = Path(tempfile.mkdtemp(prefix="mailfleet-managesieved-"))  # reachable by the dovecot user
    server = start_managesieved(base, {user: PASSWORD})
    try:
        yield server.port
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_transcript_agrees_with_dovecot(loopback_server, dovecot, user) -> None:
    ours = run("127.0.54.1", loopback_server.ports["managesieve"], user)
    theirs = run(DOVECOT_ADDRESS, dovecot, user)
    for command, mine, reference in zip(TRANSCRIPT, ours, theirs, strict=True):
        assert mine == reference, command[:40]
