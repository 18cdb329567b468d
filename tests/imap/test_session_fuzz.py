"""Property: whatever command lines a client sends to a live session, every one gets its tagged answer
(or a BYE), the session never hangs, and the server keeps serving other connections."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.imap.conftest import ImapServer, RawClient, run_server

MSG = b"From: a@example.net\r\nSubject: fuzz\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n" \
      b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n" \
      b"Subject: inner\r\n\r\nbody\r\n--x--\r\n"

WORDS = ["SELECT", "EXAMINE", "FETCH", "UID FETCH", "STORE", "UID STORE", "SEARCH", "UID SEARCH", "COPY", "MOVE",
         "UID MOVE", "EXPUNGE", "UID EXPUNGE", "CLOSE", "UNSELECT", "LIST", "LSUB", "STATUS", "CREATE", "DELETE",
         "RENAME", "SUBSCRIBE", "NOOP", "CHECK", "CAPABILITY", "NAMESPACE", "ID", "ENABLE", "APPEND", "XYZZY"]
ARGS = ["INBOX", "Trash", "fuzz", "fuzz/a", '""', '"*"', "%", "*", "1", "1:*", "*:1", "2,1", "0", "999",
        "(FLAGS)", "(BODY.PEEK[1.MIME] BODYSTRUCTURE ENVELOPE)", "BODY[2.1]<0.3>", "BODY[]", "RFC822",
        "+FLAGS", "-FLAGS.SILENT", "FLAGS", "(\\Seen)", "(\\Deleted $x)", "(\\Bogus)", "ALL", "OR", "NOT",
        "SEEN", "FROM", "x", "(", ")", "[", "]", "CHARSET", "UTF-8", "SINCE", "1-Jan-2020", "(MESSAGES UNSEEN)",
        "(CONDSTORE)", "(UNCHANGEDSINCE 1)", "(CHANGEDSINCE 0)", "NIL", "CONDSTORE", "{5+}\r\nhello", "\\",
        '"a\\"b"', "RETURN", "(MIN MAX)", "HEADER", "Subject", "UID", "LARGER", "100"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ImapServer]:
    generator = run_server(tmp_path_factory.mktemp("fuzz"), plaintext_on_loopback=True)
    srv = next(generator)
    for _ in range(3):
        srv.deliver(MSG)
    yield srv
    generator.close()


line = st.builds(lambda word, args: (word + " " + " ".join(args)).strip(),
                 st.sampled_from(WORDS), st.lists(st.sampled_from(ARGS), max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, min_size=1, max_size=8))
def test_any_command_sequence_gets_answers(server: ImapServer, commands: list[str]) -> None:
    client = RawClient(server.host, server.port)
    try:
        client.login()
        for i, command in enumerate(commands):
            reply = client.command(f"f{i}", command)
            status = reply[-1].split(b" ")[1]
            assert status in (b"OK", b"NO", b"BAD"), reply
            assert not any(b"SERVERBUG" in r for r in reply), (command, reply)
        final = client.command("z", "NOOP")
        assert final[-1].startswith(b"z OK")
    finally:
        client.close()
    # the listener still accepts and serves a fresh connection
    other = RawClient(server.host, server.port)
    assert other.greeting.startswith(b"* OK")
    other.close()
