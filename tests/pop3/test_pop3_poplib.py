"""POP3 over real loopback sockets with Python's poplib (and raw sockets where poplib has no method)."""

from __future__ import annotations

import asyncio
import base64
import poplib
import socket
import ssl
import time

import pytest
from waits import wait_until

from .conftest import PASSWORD

MESSAGE_1 = b"From: carol@example.net\r\nSubject: one\r\n\r\nHello\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
MESSAGE_2 = b"From: dave@example.net\r\nSubject: two\r\n\r\nSecond message\r\nline 2\r\nline 3\r\n"


def login(port: int, user: str = "alice@example.org") -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user(user)
    client.pass_(PASSWORD)
    return client


def login_when_unlocked(port: int) -> poplib.POP3:
    """The server releases the lock when it notices the hang-up, which can take a moment."""
    def attempt() -> poplib.POP3 | None:
        try:
            return login(port)
        except poplib.error_proto as exc:
            if b"[IN-USE]" not in exc.args[0]:
                raise
            return None

    return wait_until(attempt, 5, "the mailbox lock to be released after the first client hung up")


def run(func, *args):
    return asyncio.to_thread(func, *args)


async def test_retr_list_top_uidl_and_dele_at_quit(pop3):
    uid1, uid2 = pop3.deliver(MESSAGE_1), pop3.deliver(MESSAGE_2)
    uidvalidity = pop3.store.account("alice@example.org").folder("INBOX").uidvalidity

    def session():
        client = login(pop3.port)
        assert client.stat() == (2, len(MESSAGE_1) + len(MESSAGE_2))
        assert client.list()[1] == [f"1 {len(MESSAGE_1)}".encode(), f"2 {len(MESSAGE_2)}".encode()]
        # poplib undoes the byte-stuffing: we get back exactly the stored lines.
        assert client.retr(1)[1] == MESSAGE_1.split(b"\r\n")[:-1]
        assert client.top(2, 1)[1] == [b"From: dave@example.net", b"Subject: two", b"", b"Second message"]
        uidls = client.uidl()[1]
        assert uidls == [f"1 {uid1:08X}{uidvalidity:08X}".encode(), f"2 {uid2:08X}{uidvalidity:08X}".encode()]
        assert client.dele(2).startswith(b"+OK")
        assert client.stat()[0] == 1
        with pytest.raises(poplib.error_proto, match="already deleted"):
            client.retr(2)
        assert client.quit().startswith(b"+OK")

    await run(session)
    account = pop3.store.account("alice@example.org")
    remaining = account.messages("INBOX")
    assert [m.uid for m in remaining] == [uid1]
    assert "\\Seen" in remaining[0].flags  # RETR marks as read for IMAP, as Dovecot does


async def test_dropped_connection_and_rset_delete_nothing(pop3):
    pop3.deliver(MESSAGE_1)
    pop3.deliver(MESSAGE_2)

    def session():
        client = login(pop3.port)
        client.dele(1)
        client.close()  # hang up without QUIT: RFC 1939 §6, nothing is deleted
        client = login_when_unlocked(pop3.port)
        assert client.stat()[0] == 2
        client.dele(1)
        client.dele(2)
        assert client.stat()[0] == 0
        client.rset()
        assert client.stat()[0] == 2
        client.quit()

    await run(session)
    assert len(pop3.store.account("alice@example.org").messages("INBOX")) == 2


async def test_uidl_is_stable_across_sessions_and_new_mail(pop3):
    pop3.deliver(MESSAGE_1)

    def uidl():
        client = login(pop3.port)
        result = [line.split()[1] for line in client.uidl()[1]]
        client.quit()
        return result

    first = await run(uidl)
    pop3.deliver(MESSAGE_2)
    second = await run(uidl)
    assert second[0] == first[0] and len(second) == 2 and second[1] != first[0]


async def test_second_session_gets_in_use_until_the_first_quits(pop3):
    pop3.deliver(MESSAGE_1)

    def sessions():
        first = login(pop3.port)
        second = poplib.POP3("127.0.0.1", pop3.port, timeout=10)
        second.user("alice@example.org")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_(PASSWORD)
        other_user = login(pop3.port, "bob@example.org")  # the lock is per mailbox
        other_user.quit()
        first.dele(1)
        first.quit()
        second.user("alice@example.org")
        second.pass_(PASSWORD)
        assert second.stat() == (0, 0)
        second.quit()

    await run(sessions)


async def test_wrong_password_and_wrong_state(pop3):
    def session():
        client = poplib.POP3("127.0.0.1", pop3.port, timeout=10)
        with pytest.raises(poplib.error_proto, match="STAT is not allowed before login"):
            client.stat()
        client.user("alice@example.org")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] authentication failed"):
            client.pass_("wrong")
        with pytest.raises(poplib.error_proto, match="USER first"):
            client.pass_(PASSWORD)
        with pytest.raises(poplib.error_proto, match="unknown command"):
            client._shortcmd("XYZZY")
        client.user("ALICE@Example.org")
        client.pass_(PASSWORD)
        with pytest.raises(poplib.error_proto, match="no message 5"):
            client.retr(5)
        with pytest.raises(poplib.error_proto, match="USER is not allowed after login"):
            client.user("bob@example.org")
        client.quit()

    await run(session)


async def test_capa_before_and_after_stls_on_the_strict_server(pop3_strict, client_tls):
    pop3_strict.deliver(MESSAGE_2)

    def session():
        client = poplib.POP3("127.0.0.1", pop3_strict.port, timeout=10)
        caps = client.capa()
        assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] plaintext authentication is refused"):
            client.user("alice@example.org")
        client.stls(client_tls)
        caps = client.capa()
        assert "STLS" not in caps and "USER" in caps and caps["SASL"] == ["PLAIN", "LOGIN"]
        client.user("alice@example.org")
        client.pass_(PASSWORD)
        assert client.retr(1)[1] == MESSAGE_2.split(b"\r\n")[:-1]
        client.quit()

    await run(session)


async def test_implicit_tls(pop3_strict, client_tls):
    pop3_strict.deliver(MESSAGE_1)

    def session():
        client = poplib.POP3_SSL("127.0.0.1", pop3_strict.tls_port, context=client_tls, timeout=10)
        assert "STLS" not in client.capa()
        client.user("alice@example.org")
        client.pass_(PASSWORD)
        assert client.stat()[0] == 1
        client.quit()

    await run(session)


def _raw(port: int, *lines: bytes, tls: ssl.SSLContext | None = None) -> list[bytes]:
    """Send lines one by one on a plain socket, return every reply line (including the greeting)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    reader = sock.makefile("rb")
    replies = [reader.readline()]
    for line in lines:
        sock.sendall(line)
        replies.append(reader.readline())
    sock.close()
    return replies


async def test_auth_plain_initial_response_continuation_and_login(pop3):
    plain = base64.b64encode(b"\0alice@example.org\0" + PASSWORD.encode())
    replies = await run(_raw, pop3.port, b"AUTH PLAIN " + plain + b"\r\n", b"STAT\r\n", b"QUIT\r\n")
    assert replies[1].startswith(b"+OK logged in") and replies[2] == b"+OK 0 0\r\n"
    replies = await run(_raw, pop3.port, b"AUTH PLAIN\r\n", plain + b"\r\n", b"QUIT\r\n")
    assert replies[1] == b"+ \r\n" and replies[2].startswith(b"+OK logged in")
    user, password = (base64.b64encode(v) for v in (b"alice@example.org", PASSWORD.encode()))
    replies = await run(_raw, pop3.port, b"AUTH LOGIN\r\n", user + b"\r\n", password + b"\r\n", b"QUIT\r\n")
    assert replies[1] == b"+ VXNlcm5hbWU6\r\n" and replies[2] == b"+ UGFzc3dvcmQ6\r\n"
    assert replies[3].startswith(b"+OK logged in")
    replies = await run(_raw, pop3.port, b"AUTH PLAIN\r\n", b"*\r\n", b"AUTH PLAIN !!!\r\n",
                        b"AUTH PLAIN " + base64.b64encode(b"bob@example.org\0alice@example.org\0x") + b"\r\n")
    assert replies[2] == b"-ERR authentication cancelled\r\n"
    assert replies[3] == b"-ERR [AUTH] malformed base64 in SASL response\r\n"
    assert replies[4].startswith(b"-ERR [AUTH] authorization identity differs")


async def test_ban_after_failures_refuses_new_connections(pop3_strict, client_tls):
    def attempts():
        client = poplib.POP3_SSL("127.0.0.1", pop3_strict.tls_port, context=client_tls, timeout=10)
        for _ in range(2):
            client.user("alice@example.org")
            with pytest.raises(poplib.error_proto, match="authentication failed"):
                client.pass_("wrong")
        client.user("alice@example.org")
        with pytest.raises(poplib.error_proto, match="too many failures"):
            client.pass_("wrong")
        with pytest.raises(poplib.error_proto, match="too many authentication failures"):
            poplib.POP3_SSL("127.0.0.1", pop3_strict.tls_port, context=client_tls, timeout=10)

    await run(attempts)
    assert pop3_strict.authenticator.is_banned("127.0.0.1")


async def test_stls_with_pipelined_plaintext_is_refused(pop3_strict):
    def session():
        sock = socket.create_connection(("127.0.0.1", pop3_strict.port), timeout=10)
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"STLS\r\nUSER injected@example.org\r\n")
        reply = reader.readline()
        rest = reader.read()
        sock.close()
        return reply, rest

    reply, rest = await run(session)
    assert reply == b"-ERR data after STLS before the TLS handshake\r\n" and rest == b""


async def test_overlong_line_is_refused_and_the_listener_survives(pop3):
    replies = await run(_raw, pop3.port, b"NOOP " + b"x" * 20000 + b"\r\n")
    assert replies[1].startswith(b"-ERR line longer than")
    replies = await run(_raw, pop3.port, b"CAPA\r\n")
    assert replies[1] == b"+OK capability list follows\r\n"


async def test_quit_before_login(pop3):
    replies = await run(_raw, pop3.port, b"QUIT\r\n")
    assert replies[0].startswith(b"+OK pop.example.org") and replies[1].startswith(b"+OK")


async def test_autologout_deletes_nothing_and_releases_the_lock(pop3_short_idle):
    pop3_short_idle.deliver(MESSAGE_1)

    def session():
        client = login(pop3_short_idle.port)
        client.dele(1)
        idle = time.monotonic()
        reply = client.file.readline()  # nothing sent: the next line is the server's, at its 0.5 s timer
        assert time.monotonic() - idle >= 0.4
        client.close()
        again = login_when_unlocked(pop3_short_idle.port)
        count = again.stat()[0]
        again.quit()
        return reply, count

    reply, count = await run(session)
    assert reply == b"-ERR autologout: idle for too long\r\n"
    assert count == 1


async def test_mail_arriving_and_imap_expunge_during_a_pop3_session(pop3):
    """The session works on its login snapshot; new mail waits for the next session, and a message
    removed meanwhile (by IMAP) is reported, not crashed on."""
    uid1 = pop3.deliver(MESSAGE_1)
    pop3.deliver(MESSAGE_2)
    account = pop3.store.account("alice@example.org")

    def session():
        client = login(pop3.port)
        pop3.deliver(b"Subject: late\r\n\r\nlate\r\n")
        account.store_flags("INBOX", [uid1], ["\\Deleted"], "add")
        account.expunge("INBOX")
        assert client.stat()[0] == 2
        with pytest.raises(poplib.error_proto, match="removed by another session"):
            client.retr(1)
        client.dele(2)
        client.quit()
        client = login(pop3.port)
        subjects = [client.top(i, 0)[1][0] for i in range(1, client.stat()[0] + 1)]
        client.quit()
        return subjects

    assert await run(session) == [b"Subject: late"]


async def test_pipelined_commands_are_answered_in_order(pop3):
    """RFC 2449 §6.6 PIPELINING: the client may send several commands without waiting."""
    pop3.deliver(MESSAGE_2)

    def session():
        sock = socket.create_connection(("127.0.0.1", pop3.port), timeout=10)
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"USER alice@example.org\r\nPASS " + PASSWORD.encode() + b"\r\nSTAT\r\nLIST\r\nNOOP\r\nQUIT\r\n")
        data = reader.read()
        sock.close()
        return data.split(b"\r\n")

    lines = await run(session)
    assert lines[0] == b"+OK send PASS" and lines[1].startswith(b"+OK logged in")
    assert lines[2] == f"+OK 1 {len(MESSAGE_2)}".encode()
    assert lines[3:6] == [b"+OK 1 messages", f"1 {len(MESSAGE_2)}".encode(), b"."]
    assert lines[6] == b"+OK" and lines[7].startswith(b"+OK pop.example.org closing")
