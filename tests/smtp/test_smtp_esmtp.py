"""ESMTP as clients see it: the EHLO keywords, enhanced status codes on every reply (RFC 2034), PIPELINING
(RFC 2920) with swaks and raw bytes, STARTTLS (RFC 3207) with swaks, SMTPUTF8 (RFC 6531), 8BITMIME, SIZE
(RFC 1870), the recipient limit, and malformed commands that must get a reasoned 5xx without ending the session.
"""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest

from .probes import Evidence, RawSession, marker, message, send, server_lines, swaks

MAX_SIZE = 20_000
MAX_RCPTS = 5


@pytest.fixture(scope="module")
def host(module_mailfleet, sinks, password_hash) -> Evidence:
    relayed = sinks()
    server = module_mailfleet({
        "roles": ["primary"],
        "primary": {"domains": ["example.org", "catch.example"],
                    "users": [{"address": "alice@example.org", "password_hash": password_hash},
                              {"address": "jöran@example.org", "password_hash": None},
                              {"address": "carol@example.org", "password_hash": None, "quota": 10_000_000}],
                    "aliases": {"postmaster@example.org": ["alice@example.org"]},
                    "catch_all": {"catch.example": "alice@example.org"}},
        "smtp": {"max_message_size": MAX_SIZE, "max_recipients": MAX_RCPTS},
        "delivery": {"smarthost": f"127.0.0.1:{relayed.port}"},
    }, name="esmtp")
    return Evidence(server, (relayed,))


def tls_context(host: Evidence) -> ssl.SSLContext:
    """Trusts exactly the certificate the server generated at its first start (and checks its name)."""
    return ssl.create_default_context(cafile=str(host.server.data_dir / "tls" / "selfsigned.crt"))


# ---------------------------------------------------------------------------------------------- EHLO


def test_ehlo_lists_the_extensions(host):
    with smtplib.SMTP("127.0.0.1", host.server.smtp_port) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        for keyword in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "starttls"):
            assert client.has_extn(keyword), keyword
        assert client.esmtp_features["size"] == str(MAX_SIZE)
        assert not client.has_extn("auth"), "AUTH offered on the MX port"


def test_ehlo_after_starttls_drops_starttls_and_keeps_the_rest(host):
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        session.starttls(tls_context(host), host.server.config["hostname"])
        keywords = {line.split()[0].upper() for line in session.ehlo().lines[1:]}
        assert {"PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "ENHANCEDSTATUSCODES"} <= keywords
        assert "STARTTLS" not in keywords and "AUTH" not in keywords
        reply = session.cmd("STARTTLS")
        assert reply.code == 503 and reply.has_enhanced_code(), reply


# ---------------------------------------------------------------------------------------------- RFC 2034

# Commands sent after EHLO, good and bad; every final reply must carry a matching enhanced status code.
BATTERY = [
    "NOOP", "RSET", "VRFY alice@example.org", "EXPN staff", "HELP", "ETRN example.org", "BDAT 10 LAST",
    "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "DATA", "RCPT TO:<alice@example.org>",
    "MAIL FROM:<sender@client.example> SIZE=999999999", "MAIL FROM:<sender@client.example> FOO=BAR",
    "MAIL FROM:<sender@client.example> BODY=BINARYMIME", "MAIL FROM:sender", "MAIL FROM:<>", "MAIL FROM:<a@b.example>",
    "RCPT TO:<nobody@example.org>", "RCPT TO:<friend@remote.example>", "RCPT TO:<user%remote.example@example.org>",
    "RCPT TO:<user@[127.0.0.1]>", "RCPT TO:<ålice@example.org>", "RCPT TO:<a@b@c>", "RCPT TO:<alice@example.org> X=Y",
    "STARTTLS now", "DATA now", "RSET", "XYZZY", "MAIL", "RCPT", "QUIT",
]


def test_every_final_reply_after_ehlo_carries_an_enhanced_code(host):
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        for command in BATTERY:
            reply = session.cmd(command)
            assert reply.has_enhanced_code(), f"{command!r} -> {reply}"
            assert reply.lines[-1].split(" ", 1)[1].strip(), f"{command!r}: no text after the codes"


def test_a_whole_transaction_carries_enhanced_codes_including_the_starttls_220(host):
    mark = marker()
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        tls_reply = session.starttls(tls_context(host), host.server.config["hostname"])
        session.ehlo()
        replies = [tls_reply, session.cmd("MAIL FROM:<sender@client.example>"),
                   session.cmd("RCPT TO:<alice@example.org>")]
        assert session.cmd("DATA").code == 354
        session.send(message(mark) + b".\r\n")
        replies += [session.reply(), session.cmd("QUIT")]
    assert [r.code for r in replies] == [220, 250, 250, 250, 221]
    assert all(r.has_enhanced_code() for r in replies), [str(r) for r in replies]
    host.wait_mailbox("alice@example.org", mark)


# ---------------------------------------------------------------------------------------------- PIPELINING


def test_swaks_pipelined_transaction(host):
    mark = marker()
    done = swaks("--server", f"127.0.0.1:{host.server.smtp_port}", "--pipeline", "--from", "sender@client.example",
                 "--to", "alice@example.org,nobody@example.org,postmaster@example.org", "--header",
                 f"Subject: pipelined {mark}")
    replies = server_lines(done.stdout)
    # swaks sends MAIL, the RCPTs and DATA in one go, then reads the four replies in order.
    assert "-> MAIL FROM:<sender@client.example>\n -> RCPT TO:<alice@example.org>" in done.stdout, done.stdout
    assert any(r.startswith("550 5.1.1 <nobody@example.org>") for r in replies), replies
    assert any(r.startswith("250 2.0.0 OK queued as") for r in replies), done.stdout
    [stored] = host.wait_mailbox("alice@example.org", mark)  # alias and user: one copy
    host.wait_spool_empty()
    assert len(host.mailbox_files(mark)) == 1


def test_raw_pipelining_of_two_transactions_in_one_write(host):
    """RFC 2920: replies come in order, one per command, even when everything arrives in one segment."""
    first, second = marker(), marker()
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        session.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<alice@example.org>\r\n"
                     b"RCPT TO:<nobody@example.org>\r\nDATA\r\n")
        assert [session.reply().code for _ in range(4)] == [250, 250, 550, 354]
        session.send(message(first) + b".\r\nMAIL FROM:<b@client.example>\r\n"
                     + "RCPT TO:<jöran@example.org>\r\n".encode()  # UTF-8 without SMTPUTF8: 553
                     + b"RSET\r\nMAIL FROM:<c@client.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        codes = [session.reply().code for _ in range(7)]
        assert codes == [250, 250, 553, 250, 250, 250, 354], codes
        session.send(message(second) + b".\r\nQUIT\r\n")
        assert [session.reply().code for _ in range(2)] == [250, 221]
    host.wait_mailbox("alice@example.org", first)
    host.wait_mailbox("alice@example.org", second)


# ---------------------------------------------------------------------------------------------- STARTTLS


def test_swaks_starttls_with_certificate_verification(host):
    mark = marker()
    done = swaks("--server", f"127.0.0.1:{host.server.smtp_port}", "-tls", "--tls-verify", "--tls-ca-path",
                 str(host.server.data_dir / "tls" / "selfsigned.crt"), "--from", "sender@client.example",
                 "--to", "alice@example.org", "--header", f"Subject: tls {mark}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "~> MAIL FROM:<sender@client.example>" in done.stdout, "the transaction did not run inside TLS"
    assert any(r.startswith("250 2.0.0 OK queued as") for r in server_lines(done.stdout)), done.stdout
    [stored] = host.wait_mailbox("alice@example.org", mark)
    received = stored.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPS" in received  # RFC 3848: the trace shows the hop was encrypted


def test_commands_injected_before_the_tls_handshake_are_discarded(host):
    """A plaintext command sent right behind STARTTLS (CVE-2011-0411 style) must not run inside TLS."""
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        session.send(b"STARTTLS\r\nMAIL FROM:<injected@attacker.example>\r\n")
        assert session.reply().code == 220
        session.sock = tls_context(host).wrap_socket(session.sock, server_hostname=host.server.config["hostname"])
        assert session.pending() == b"", "the server answered a command injected before the handshake"
        session.ehlo()
        reply = session.cmd("MAIL FROM:<sender@client.example>")
        assert reply.code == 250, f"injected MAIL was kept: {reply}"


# ---------------------------------------------------------------------------------------------- SMTPUTF8 / 8BITMIME


def test_smtputf8_addresses_are_accepted_and_delivered(host):
    mark = marker()
    body = f"From: ünïcode@client.example\r\nSubject: {mark} Grüße\r\n\r\nHallo Jöran {mark}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", host.server.smtp_port) as client:
        client.ehlo()
        refused = client.sendmail("ünïcode@bücher.example", ["jöran@example.org"], body,
                                  mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert refused == {}
    [stored] = host.wait_mailbox("jöran@example.org", mark)
    assert "Hallo Jöran".encode() in stored.read_bytes()


def test_utf8_address_without_smtputf8_parameter_is_refused_553_5_6_7(host):
    mark = marker()
    result = send(host.server.smtp_port, ["jöran@example.org"], mark)
    reply = result.rcpts["jöran@example.org"]
    assert (reply.code, reply.lines[-1][:5]) == (553, "5.6.7"), reply
    result = send(host.server.smtp_port, ["alice@example.org"], mark, mail_from="ünïcode@client.example")
    assert (result.mail.code, result.mail.lines[-1][:5]) == (553, "5.6.7"), result.mail
    host.assert_nothing(mark)


def test_8bit_body_arrives_byte_for_byte(host):
    mark = marker()
    raw = f"Subject: {mark}\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n".encode() + bytes(range(128, 256))
    result = send(host.server.smtp_port, ["alice@example.org"], mark, mail_params="BODY=8BITMIME",
                  body=raw + b"\r\n")
    assert result.data is not None and result.data.code == 250
    [stored] = host.wait_mailbox("alice@example.org", mark)
    assert bytes(range(128, 256)) in stored.read_bytes()


# ---------------------------------------------------------------------------------------------- SIZE


def test_mail_from_size_over_the_limit_is_refused_552_5_3_4(host):
    mark = marker()
    result = send(host.server.smtp_port, ["alice@example.org"], mark, mail_params=f"SIZE={MAX_SIZE + 1}")
    assert (result.mail.code, result.mail.lines[-1][:5]) == (552, "5.3.4"), result.mail
    assert result.data is None
    host.assert_nothing(mark)


def test_mail_from_size_at_the_limit_is_accepted(host):
    mark = marker()
    result = send(host.server.smtp_port, ["alice@example.org"], mark, mail_params=f"SIZE={MAX_SIZE}")
    assert result.mail.code == 250 and result.data is not None and result.data.code == 250
    host.wait_mailbox("alice@example.org", mark)


def test_data_over_the_limit_is_refused_552_and_nothing_is_queued(host):
    mark = marker()
    big = message(mark) + (b"x" * 900 + b"\r\n") * (MAX_SIZE // 900 + 2)
    result = send(host.server.smtp_port, ["alice@example.org"], mark, body=big)  # no SIZE= declared: a liar
    assert result.data is not None and (result.data.code, result.data.lines[-1][:5]) == (552, "5.3.4"), result
    host.assert_nothing(mark, settle=5)
    assert not list((host.server.data_dir / "spool" / "tmp").iterdir())


def test_data_just_under_the_limit_is_accepted(host):
    mark = marker()
    body = message(mark) + (b"y" * 98 + b"\r\n") * ((MAX_SIZE - 1000) // 100)
    assert len(body) < MAX_SIZE
    result = send(host.server.smtp_port, ["alice@example.org"], mark, body=body)
    assert result.data is not None and result.data.code == 250, result.data
    host.assert_on_disk(result.queue_id, mark)
    [stored] = host.wait_mailbox("alice@example.org", mark)
    assert stored.read_bytes().count(b"y" * 98) == (MAX_SIZE - 1000) // 100


# ---------------------------------------------------------------------------------------------- limits, bad input


def test_recipients_beyond_max_recipients_get_452_4_5_3(host):
    mark = marker()
    rcpts = [f"r{i}@catch.example" for i in range(MAX_RCPTS + 2)]
    result = send(host.server.smtp_port, rcpts, mark)
    codes = [(r.code, r.lines[-1][:5]) for r in result.rcpts.values()]
    assert codes == [(250, "2.1.5")] * MAX_RCPTS + [(452, "4.5.3")] * 2, codes
    assert result.data is not None and result.data.code == 250
    [stored] = host.wait_mailbox("alice@example.org", mark)  # the catch-all: one copy for five recipients


MALFORMED = [
    b"MAIL FROM:<<sender@client.example>>",
    b"MAIL TO:<sender@client.example>",
    b"MAIL FROM:<sender@client.example> SIZE=ten",
    b"MAIL FROM:<sender@client.example> SMTPUTF8=yes",
    b"RCPT TO:<alice@example.org>",  # before MAIL
    b"DATA",  # before MAIL
    b"EHLO",
    b"HELO",
    b"\xff\xfe\xfd",
    b"MAIL FROM:<a\x00b@client.example>",
    b"",
    b" ",
    b"A" * 2000,
    b"MAIL FROM:<" + b"a" * 70 + b"@client.example>",
    b"RSET extra",
    b"QUIT now",
    b"MAIL FROM:<",  # the email package's parser (inside aiosmtpd) raises IndexError on these
    b"RCPT TO:<",
]


@pytest.mark.parametrize("line", MALFORMED, ids=lambda b: repr(b[:30]))
def test_malformed_command_gets_a_reasoned_5xx_and_the_session_survives(host, line):
    mark = marker()
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        reply = session.cmd(line)
        assert 500 <= reply.code < 600, f"{line!r} -> {reply}"
        assert len(reply.lines[-1].split()) >= 2, f"{line!r}: no reason: {reply}"
        assert session.cmd("NOOP").code == 250
        assert session.cmd("RSET").code == 250
        assert session.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert session.cmd("RCPT TO:<alice@example.org>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(mark) + b".\r\n")
        assert session.reply().code == 250
    host.wait_mailbox("alice@example.org", mark)


def _greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data


def test_sessions_beyond_max_sessions_get_421_and_the_listener_recovers(module_mailfleet):
    server = module_mailfleet({"roles": ["primary"], "primary": {"domains": ["example.org"]},
                               "smtp": {"max_sessions": 3}}, name="max-sessions")
    sessions = [RawSession("127.0.0.1", server.smtp_port) for _ in range(3)]
    try:
        assert [s.greeting.code for s in sessions] == [220] * 3
        assert _greeting(server.smtp_port).startswith(b"421 4.3.2 "), "a fourth session was let in"
        assert sessions[0].cmd("NOOP").code == 250, "the refusal disturbed the open sessions"
    finally:
        for session in sessions:
            session.close()
    server.wait_for(lambda: _greeting(server.smtp_port).startswith(b"220 "), what="a free session slot")


def test_null_sender_is_accepted_for_bounces(host):
    """RFC 5321 §4.5.5: DSNs come from the null reverse-path; refusing it loses every bounce."""
    mark = marker()
    result = send(host.server.smtp_port, ["alice@example.org"], mark, mail_from="")
    assert result.mail.code == 250 and result.data is not None and result.data.code == 250, result
    host.assert_on_disk(result.queue_id, mark)
    [stored] = host.wait_mailbox("alice@example.org", mark)
    assert stored.read_bytes().startswith(b"Return-Path: <>\r\n")


def test_plain_helo_session_without_extensions(host):
    mark = marker()
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        assert session.cmd("HELO old.client.test").code == 250
        reply = session.cmd("MAIL FROM:<sender@client.example> SIZE=100")
        assert reply.code == 501, "ESMTP parameters accepted after HELO"
        assert session.cmd("MAIL FROM:<sender@client.example>").code == 250
        assert session.cmd("RCPT TO:<alice@example.org>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(mark) + b".\r\n")
        assert session.reply().code == 250
    [stored] = host.wait_mailbox("alice@example.org", mark)
    assert b"from old.client.test" in stored.read_bytes() and b"with SMTP id" in stored.read_bytes()


@pytest.mark.parametrize("command", [b"MAIL FROM:<caf\xe9@client.example> SMTPUTF8",
                                     b"RCPT TO:<caf\xe9@example.org>", b"RCPT TO:<x@b\xfccher.example>",
                                     b"RCPT TO:<\xff@example.org>"],
                         ids=["mail", "rcpt-local", "rcpt-domain", "rcpt-ff"])
def test_addresses_that_are_not_utf8_are_refused_even_with_smtputf8(host, command):
    """Latin-1 bytes where RFC 6531 requires UTF-8 must not reach the spool (nor crash the session)."""
    mark = marker()
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        session.ehlo()
        if command.startswith(b"RCPT"):
            assert session.cmd("MAIL FROM:<sender@client.example> SMTPUTF8").code == 250
        reply = session.cmd(command)
        assert reply.code == 553 and reply.has_enhanced_code() and "UTF-8" in reply.text, reply
        assert session.cmd("NOOP").code == 250
        session.cmd("RSET")
        assert session.cmd("MAIL FROM:<sender@client.example> SMTPUTF8").code == 250
        assert session.cmd("RCPT TO:<alice@example.org>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(mark) + b".\r\n")
        assert session.reply().code == 250
    host.wait_mailbox("alice@example.org", mark)


def test_an_internal_fault_answers_451_without_internals_and_the_session_goes_on(host):
    """A corrupt mailbox index (carol has a quota, so RCPT reads it) is our fault: 451, not aiosmtpd's 500."""
    index = host.server.data_dir / "mail" / "example.org" / "carol" / "mailfleet.sqlite"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_bytes(b"this is not an SQLite database\n" * 200)
    mark = marker()
    result = send(host.server.smtp_port, ["carol@example.org", "alice@example.org"], mark)
    reply = result.rcpts["carol@example.org"]
    assert (reply.code, reply.lines[-1][:5]) == (451, "4.3.0"), reply
    assert "Error" not in reply.text and "sqlite" not in reply.text.lower(), f"internals leaked: {reply}"
    assert result.rcpts["alice@example.org"].code == 250
    assert result.data is not None and result.data.code == 250
    host.wait_mailbox("alice@example.org", mark)
    assert "answering 451" in host.server.log()
