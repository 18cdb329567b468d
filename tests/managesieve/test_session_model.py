"""Model-based test of the session: random sequences of script commands (and junk) against the real server code
in this process, each response checked against what RFC 5804 says a plain model of the user's scripts gives."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config.model import SieveConfig
from appliance.managesieve.server import start_managesieve
from appliance.sieve.storage import ScriptStore
from tests.managesieve.conftest import ADDRESS, BAD, GOOD

LIMITS = SieveConfig(max_script_size=2048, max_scripts=2)
NAMES = st.sampled_from(["a", "b", "c"])  # few names, so that commands meet the scripts of others
PUT = st.tuples(st.just("put"), NAMES, st.booleans())
OPERATIONS = st.one_of(  # puts twice as often: most commands need a script to work on
    PUT,
    PUT,
    st.tuples(st.just("delete"), NAMES),
    st.tuples(st.just("rename"), NAMES, NAMES),
    st.tuples(st.just("activate"), st.one_of(NAMES, st.just(""))),
    st.tuples(st.just("get"), NAMES),
    st.tuples(st.just("junk"), st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"{" not in b)),
)
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Anyone:
    """Every login is alice (the Authenticator's interface; passwords are another test's matter)."""

    def is_banned(self, client_ip: str) -> bool:
        return False

    async def authenticate(self, username: str, password: str, client_ip: str) -> str | None:
        return "alice@example.org"


async def response(reader: asyncio.StreamReader) -> list[bytes]:
    lines = []
    while True:
        line = await reader.readline()
        assert line, "the server closed the connection"
        literal = _LITERAL.search(line)
        if literal:
            line += await reader.readexactly(int(literal.group(1))) + await reader.readline()
        lines.append(line)
        if line[:2] in (b"OK", b"NO") or line[:3] == b"BYE":
            return lines


def literal(text: str) -> bytes:
    return b"{%d+}\r\n" % len(text.encode()) + text.encode()


def expect(model: dict[str, str], active: list[str | None], op: tuple) -> tuple[bytes, list[bytes] | None]:
    """The command to send, and the status line's start and data lines RFC 5804 gives (None: any)."""
    kind = op[0]
    if kind == "put":
        name, valid = op[1], op[2]
        command = b'PUTSCRIPT "%s" ' % name.encode() + literal(GOOD if valid else BAD)
        if not valid:
            return command, [b"NO "]
        if name not in model and len(model) >= LIMITS.max_scripts:
            return command, [b"NO (QUOTA/MAXSCRIPTS)"]
        model[name] = GOOD
        return command, [b"OK"]
    if kind == "delete":
        command = b'DELETESCRIPT "%s"' % op[1].encode()
        if op[1] not in model:
            return command, [b"NO (NONEXISTENT)"]
        if active[0] == op[1]:
            return command, [b"NO (ACTIVE)"]
        del model[op[1]]
        return command, [b"OK"]
    if kind == "rename":
        old, new = op[1], op[2]
        command = b'RENAMESCRIPT "%s" "%s"' % (old.encode(), new.encode())
        if old not in model:
            return command, [b"NO (NONEXISTENT)"]
        if new in model:
            return command, [b"NO (ALREADYEXISTS)"]
        model[new] = model.pop(old)
        if active[0] == old:
            active[0] = new
        return command, [b"OK"]
    if kind == "activate":
        command = b'SETACTIVE "%s"' % op[1].encode()
        if op[1] and op[1] not in model:
            return command, [b"NO (NONEXISTENT)"]
        active[0] = op[1] or None
        return command, [b"OK"]
    if kind == "get":
        command = b'GETSCRIPT "%s"' % op[1].encode()
        if op[1] not in model:
            return command, [b"NO (NONEXISTENT)"]
        return command, [b"OK", literal(model[op[1]]).replace(b"+}", b"}") + b"\r\n"]
    return op[1], None


async def session(folder: Path, operations: list[tuple]) -> None:
    servers = await start_managesieve([(ADDRESS, 0)], ScriptStore(folder), Anyone(), None, "test", True,
                                      lambda: LIMITS)
    port = servers[0].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(ADDRESS, port)
    try:
        await response(reader)
        writer.write(b'AUTHENTICATE "PLAIN" "AGFsaWNlAHB3"\r\n')
        assert (await response(reader))[-1].startswith(b"OK")
        model: dict[str, str] = {}
        active: list[str | None] = [None]
        for op in operations:
            command, expected = expect(model, active, op)
            writer.write(command + b"\r\n")
            lines = await response(reader)
            assert not lines[-1].startswith(b"BYE"), (op, lines)
            if expected is not None:
                assert lines[-1].startswith(expected[0]), (op, lines)
                assert lines[:-1] == expected[1:], (op, lines)
        writer.write(b"LISTSCRIPTS\r\n")
        listing = await response(reader)
        assert sorted(listing[:-1]) == sorted(b'"%s"%s\r\n' % (name.encode(), b" ACTIVE" if name == active[0] else b"")
                                              for name in model)
    finally:
        writer.close()
        for server in servers:
            server.close()


@settings(max_examples=60)
@given(st.lists(OPERATIONS, min_size=3, max_size=30))
def test_the_session_follows_the_model(operations: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(session(Path(folder), operations))
