"""SMTP smuggling (the 2023 advisories; RFC 5321 §2.3.8, §4.1.1.4): only <CRLF>.<CRLF> ends the data.

Each case sends one message whose body hides an alternative end-of-data marker followed by a complete second
transaction. A server that honours the odd marker would answer the first message early and then run the
smuggled MAIL/RCPT/DATA. Ours must answer exactly once, after the real <CRLF>.<CRLF>, and let no smuggled
message reach a mailbox or the next hop; it refuses data with bare CR or LF outright (550 5.6.0), and data or
commands holding a NUL (550 5.6.0, 500 5.5.2).
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from .probes import Evidence, RawSession, marker, message

VARIANTS = [
    pytest.param(b"\n.\n", id="LF.LF"),
    pytest.param(b"\n.\r\n", id="LF.CRLF"),
    pytest.param(b"\r\n.\n", id="CRLF.LF"),
    pytest.param(b"\r.\r", id="CR.CR"),
    pytest.param(b"\r.\r\n", id="CR.CRLF"),
    pytest.param(b"\r\n.\r", id="CRLF.CR"),
    pytest.param(b"\r\n\r.\r\n", id="CRLF-CR.CRLF"),
]


@pytest.fixture(scope="module")
def host(module_mailfleet, sinks, password_hash):
    downstream = sinks()
    server = module_mailfleet({
        "roles": ["primary", "incoming_gateway"],
        "primary": {"domains": ["example.org"],
                    "users": [{"address": "alice@example.org", "password_hash": password_hash},
                              {"address": "bob@example.org", "password_hash": None}]},
        "incoming_gateway": {"domains": {"example.net": {"destinations": [f"127.0.0.1:{downstream.port}"]}}},
        "delivery": {"smarthost": f"127.0.0.1:{downstream.port}"},
    }, name="smuggling")
    return Evidence(server, (downstream,))


def _smuggled(hidden_end: bytes, rcpt: str, smuggled_mark: str) -> bytes:
    return (hidden_end + b"MAIL FROM:<evil@attacker.example>\r\n" + f"RCPT TO:<{rcpt}>\r\n".encode()
            + b"DATA\r\n" + f"From: ceo@example.org\r\nSubject: smuggled {smuggled_mark}\r\n\r\n".encode()
            + f"smuggled {smuggled_mark}\r\n".encode())


def _attempt(host: Evidence, rcpt: str, hidden: bytes, mark: str, evil: str) -> None:
    """Smuggling attempt, then a clean message in the same session; asserts on replies."""
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        assert session.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert session.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(evil, "first") + _smuggled(hidden, rcpt, evil) + b".\r\n")
        reply = session.reply()
        assert (reply.code, reply.lines[-1][:5]) == (550, "5.6.0"), reply
        assert "bare CR or LF" in reply.text
        assert session.pending() == b"", "the server answered commands hidden in the data"
        assert session.cmd("NOOP").code == 250, "session did not survive the refusal"
        # The same session carries on with a clean message.
        assert session.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert session.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(mark, "clean") + b".\r\n")
        assert session.reply().code == 250
        session.cmd("QUIT")


@pytest.mark.parametrize("hidden", VARIANTS)
def test_hidden_end_of_data_to_a_local_mailbox(host, hidden):
    mark, evil = marker(), marker()
    _attempt(host, "alice@example.org", hidden, mark, evil)
    assert len(host.wait_mailbox("alice@example.org", mark)) == 1
    host.wait_spool_empty()
    assert host.everywhere(evil) == [], "a smuggled or refused message was stored"


@pytest.mark.parametrize("hidden", VARIANTS)
def test_hidden_end_of_data_to_the_next_hop(host, hidden):
    """What the 2023 attacks were about: the next MTA must not receive a message it would split in two."""
    mark, evil = marker(), marker()
    downstream = host.sinks[0]
    before = len(downstream.messages)
    _attempt(host, "anyone@example.net", hidden, mark, evil)
    [got] = host.wait_sink(downstream, mark)
    host.wait_spool_empty()
    assert host.everywhere(evil) == []
    assert len(downstream.messages) == before + 1 and got.rcpt_tos == ("anyone@example.net",)


@pytest.mark.parametrize("stray", [pytest.param(b"one\ntwo\r\n", id="bare-LF"),
                                   pytest.param(b"one\rtwo\r\n", id="bare-CR"),
                                   pytest.param(b"trailing CR\r\r\n", id="CR-CRLF")])
def test_bare_cr_or_lf_anywhere_in_the_data_is_refused(host, stray):
    evil = marker()
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        session.cmd("MAIL FROM:<sender@client.example>")
        assert session.cmd("RCPT TO:<bob@example.org>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(evil) + stray + b".\r\n")
        reply = session.reply()
        assert reply.code == 550 and reply.has_enhanced_code(), reply
        assert session.pending() == b""
    host.assert_nothing(evil, settle=5)


def test_a_dot_line_inside_a_message_is_transparent_not_an_end(host):
    """RFC 5321 §4.5.2: smtplib dot-stuffs '.' lines; we unstuff them and the next hop gets them stuffed again."""
    mark = marker()
    body = (f"Subject: dots {mark}\r\n\r\nbefore\r\n.\r\nMAIL FROM:<evil@attacker.example>\r\n"
            f"..two dots\r\n.leading dot\r\nafter {mark}\r\n")
    downstream = host.sinks[0]
    before = len(downstream.messages)
    with smtplib.SMTP("127.0.0.1", host.server.smtp_port) as client:
        refused = client.sendmail("sender@client.example", ["bob@example.org", "x@example.net"], body.encode())
    assert refused == {}
    [stored] = host.wait_mailbox("bob@example.org", mark)
    content = stored.read_bytes()
    assert b"\r\nbefore\r\n.\r\nMAIL FROM:<evil@attacker.example>\r\n..two dots\r\n.leading dot\r\nafter" in content
    [relayed] = host.wait_sink(downstream, mark)
    assert b"\r\nbefore\r\n.\r\nMAIL FROM:<evil@attacker.example>\r\n..two dots\r\n.leading dot\r\n" in relayed.data
    assert len(downstream.messages) == before + 1


def _one_message(session: RawSession, data: bytes, pieces: tuple[int, ...] = ()) -> None:
    """DATA with `data` (already ending in CRLF) and the end marker, cut into TCP segments at `pieces`."""
    assert session.cmd("MAIL FROM:<sender@client.example>").code == 250
    assert session.cmd("RCPT TO:<bob@example.org>").code == 250
    assert session.cmd("DATA").code == 354
    wire = data + b".\r\n"
    start = 0
    for cut in (*pieces, len(wire)):
        session.send(wire[start:cut])
        start = cut
        time.sleep(0.02)  # separate segments, separate reads on the server
    reply = session.reply()
    assert reply.code == 250, reply
    assert session.pending(0.05) == b"", "more than one answer to one message"


def test_end_marker_split_across_segments_at_every_offset(host):
    """Only <CRLF>.<CRLF> ends the data, wherever the TCP segments happen to cut it."""
    marks = []
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session.ehlo()
        for back in range(1, 7):  # cut 1..6 bytes before the end: inside "\r\n.\r\n" and just before it
            mark = marker()
            data = message(mark) + b"line before the end\r\n"
            _one_message(session, data, (len(data) + 3 - back,))
            marks.append((mark, data))
    for mark, data in marks:
        [stored] = host.wait_mailbox("bob@example.org", mark)
        assert stored.read_bytes().endswith(data), "the message was cut or extended"


def test_messages_around_the_line_buffer_size_arrive_whole(host):
    """Bodies whose end marker falls on either side of 1001-byte reads, with '.' lines and long-ish lines."""
    marks = []
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        for filler in [*range(985, 1010, 3), *range(1985, 2010, 4)]:
            mark = marker()
            head = message(mark)
            line = b"x" * (filler % 900 + 50) + b"\r\n"
            body = head + (line * (filler // len(line) + 1))[: filler - len(head)]
            body = body.rstrip(b"\r\n.") + b"\r\n..stuffed\r\n"  # a dot-stuffed last line
            _one_message(session, body, (len(body) // 2,))
            marks.append((mark, body.replace(b"\r\n..", b"\r\n.")))
    for mark, unstuffed in marks:
        [stored] = host.wait_mailbox("bob@example.org", mark)
        assert stored.read_bytes().endswith(unstuffed)


def test_nul_in_the_data_is_refused_not_relayed(host):
    """Issue 15: ``<CRLF><NUL>.<CRLF>`` was accepted and relayed byte for byte; a next hop that drops NULs would
    see an end of data there and run what follows as commands. RFC 5322 §3.5 and RFC 2045 §2.8 exclude NUL from
    text and 8bit data (we offer no BINARYMIME): the message is refused at the end of DATA."""
    mark, evil = marker(), marker()
    downstream = host.sinks[0]
    before = len(downstream.messages)
    with RawSession("127.0.0.1", host.server.smtp_port, source="127.0.37.3") as session:
        session.ehlo()
        assert session.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert session.cmd("RCPT TO:<anyone@example.net>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(evil, "first") + _smuggled(b"\r\n\x00.\r\n", "anyone@example.net", evil) + b".\r\n")
        reply = session.reply()
        assert (reply.code, reply.lines[-1][:5]) == (550, "5.6.0"), reply
        assert "NUL" in reply.text
        assert session.pending() == b""
        # The session carries on, and a clean message goes through.
        assert session.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert session.cmd("RCPT TO:<anyone@example.net>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(mark, "clean") + b".\r\n")
        assert session.reply().code == 250
        session.cmd("QUIT")
    host.wait_sink(downstream, mark)
    host.wait_spool_empty()
    assert host.everywhere(evil) == []
    assert len(downstream.messages) == before + 1
    assert "refused: NUL in DATA" in host.server.log()


@pytest.mark.parametrize("line", [b"EHLO evil\x00.example", b"MAIL FROM:<a\x00@client.example>",
                                  b"RCPT TO:<bob@example.org>\x00", b"\x00"])
def test_nul_in_a_command_is_refused(host, line):
    with RawSession("127.0.0.1", host.server.smtp_port, source="127.0.37.4") as session:
        if not line.startswith(b"EHLO"):
            session.ehlo()
            session.cmd("MAIL FROM:<sender@client.example>" if line.startswith(b"RCPT") else "RSET")
        reply = session.cmd(line)
        assert (reply.code, reply.lines[-1][:5]) == (500, "5.5.2"), reply
        assert "NUL" in reply.text
        assert session.cmd("NOOP").code == 250, "session did not survive the refusal"
