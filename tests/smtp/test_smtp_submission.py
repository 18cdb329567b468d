"""Submission (RFC 6409, AUTH per RFC 4954): logins only where they belong, senders bound to the login, relaying
only for authenticated users, and a ban after repeated failures.

Two primaries: one allows plaintext AUTH on loopback (tests, demo), one does not (STARTTLS first, as in
production). Both relay out through a loopback smarthost sink, so a relayed message is seen arriving.
"""

from __future__ import annotations

import base64
import smtplib
import ssl

import pytest

from .probes import PASSWORD, Evidence, RawSession, marker, message, send, server_lines, swaks

ALICE = "alice@example.org"


def _config(password_hash: str, relay_port: int, plaintext_on_loopback: bool) -> dict:
    return {
        "roles": ["primary"],
        "primary": {"domains": ["example.org"],
                    "users": [{"address": ALICE, "password_hash": password_hash},
                              {"address": "bob@example.org", "password_hash": password_hash}],
                    "aliases": {"info@example.org": [ALICE], "sales@example.org": [ALICE, "bob@example.org"],
                                "bobs-alias@example.org": ["bob@example.org"]}},
        "tls": {"plaintext_auth_on_loopback": plaintext_on_loopback},
        "delivery": {"smarthost": f"127.0.0.1:{relay_port}"},
    }


@pytest.fixture(scope="module")
def host(module_mailfleet, sinks, password_hash) -> Evidence:
    """plaintext_auth_on_loopback: true."""
    relayed = sinks()
    server = module_mailfleet(_config(password_hash, relayed.port, True), services=("smtp", "submission"),
                              name="submission")
    return Evidence(server, (relayed,))


@pytest.fixture(scope="module")
def strict(module_mailfleet, sinks, password_hash) -> Evidence:
    """plaintext_auth_on_loopback: false: STARTTLS (or port 465) before any AUTH."""
    relayed = sinks()
    server = module_mailfleet(_config(password_hash, relayed.port, False),
                              services=("smtp", "submission", "submissions"), name="submission-strict")
    return Evidence(server, (relayed,))


def port(host: Evidence, service: str = "submission") -> int:
    return host.server.ports[service]


def tls_context(host: Evidence) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(host.server.data_dir / "tls" / "selfsigned.crt"))


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def login_session(host: Evidence, source: str | None = None, user: str = ALICE) -> RawSession:
    session = RawSession("127.0.0.1", port(host), source)
    session.ehlo()
    reply = session.cmd(f"AUTH PLAIN {plain(user, PASSWORD)}")
    assert (reply.code, reply.lines[-1][:5]) == (235, "2.7.0"), reply
    return session


# ---------------------------------------------------------------------------------------------- port 25


def test_port_25_does_not_offer_auth_and_answers_502(host):
    with RawSession("127.0.0.1", host.server.smtp_port) as session:
        features = " ".join(session.ehlo().lines)
        assert "AUTH" not in features
        for command in (f"AUTH PLAIN {plain(ALICE, PASSWORD)}", "AUTH LOGIN"):
            reply = session.cmd(command)
            assert (reply.code, reply.lines[-1][:5]) == (502, "5.5.1"), reply
        assert session.cmd("MAIL FROM:<alice@example.org>").code == 250
        reply = session.cmd("RCPT TO:<friend@remote.example>")
        assert (reply.code, reply.lines[-1][:5]) == (550, "5.7.1"), "port 25 relayed for a non-authenticated client"


# ---------------------------------------------------------------------------------------------- AUTH mechanisms


def test_submission_offers_plain_and_login(host):
    with smtplib.SMTP("127.0.0.1", port(host)) as client:
        client.ehlo()
        assert set(client.esmtp_features["auth"].upper().split()) >= {"PLAIN", "LOGIN"}


def test_auth_plain_then_local_delivery(host):
    mark = marker()
    with smtplib.SMTP("127.0.0.1", port(host)) as client:
        client.ehlo()
        code, text = client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")
        assert (code, text[:5]) == (235, b"2.7.0")
        assert client.sendmail(ALICE, ["bob@example.org"], message(mark)) == {}
    [stored] = host.wait_mailbox("bob@example.org", mark)
    trace = stored.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPA" in trace  # RFC 3848: authenticated submission


def test_auth_login_with_smtplib(host):
    with smtplib.SMTP("127.0.0.1", port(host)) as client:
        client.ehlo()
        client.user, client.password = ALICE, PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_authenticated_relay_to_a_remote_domain_is_queued_and_sent(host, mechanism):
    mark = marker()
    done = swaks("--server", f"127.0.0.1:{port(host)}", "-a", mechanism, "-au", ALICE, "-ap", PASSWORD,
                 "--from", ALICE, "--to", "friend@remote.example", "--header", f"Subject: relay {mark}")
    replies = server_lines(done.stdout)
    assert any(r.startswith("235 2.7.0") for r in replies), done.stdout
    queued = [r for r in replies if r.startswith("250 2.0.0 OK queued as")]
    assert queued, done.stdout
    host.assert_on_disk(queued[0].rsplit(" ", 1)[1], mark)
    [got] = host.wait_sink(host.sinks[0], mark)
    assert (got.mail_from, got.rcpt_tos) == (ALICE, ("friend@remote.example",))


def test_wrong_password_and_unknown_user_get_535_5_7_8(host):
    with RawSession("127.0.0.1", port(host), "127.0.0.40") as session:
        session.ehlo()
        for user, password in ((ALICE, "wrong"), ("nobody@example.org", PASSWORD), ("ALICE@example.org", "x")):
            reply = session.cmd(f"AUTH PLAIN {plain(user, password)}")
            assert (reply.code, reply.lines[-1][:5]) == (535, "5.7.8"), reply
        reply = session.cmd("MAIL FROM:<alice@example.org>")
        assert (reply.code, reply.lines[-1][:5]) == (530, "5.7.0"), "a failed login let MAIL through"


def test_auth_login_with_wrong_password(host):
    with RawSession("127.0.0.1", port(host), "127.0.0.41") as session:
        session.ehlo()
        assert session.cmd("AUTH LOGIN").code == 334
        assert session.cmd(base64.b64encode(ALICE.encode())).code == 334
        reply = session.cmd(base64.b64encode(b"not the password"))
        assert (reply.code, reply.lines[-1][:5]) == (535, "5.7.8"), reply


@pytest.mark.parametrize("command", ["AUTH PLAIN !!!notbase64", "AUTH PLAIN " + base64.b64encode(b"no-nuls").decode(),
                                     "AUTH CRAM-MD5", "AUTH", "AUTH LOGIN\r\n*",
                                     "AUTH PLAIN " + base64.b64encode(f"bob@example.org\0{ALICE}\0{PASSWORD}".encode()
                                                                      ).decode()])
def test_malformed_auth_gets_5xx_and_the_session_survives(host, command):
    with RawSession("127.0.0.1", port(host), "127.0.0.42") as session:
        session.ehlo()
        if command.endswith("\r\n*"):
            assert session.cmd("AUTH LOGIN").code == 334
            reply = session.cmd("*")  # RFC 4954 §4: the client cancels
        else:
            reply = session.cmd(command)
        assert 500 <= reply.code < 600 and reply.has_enhanced_code(), reply
        assert session.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}").code == 235


def test_mail_before_auth_is_refused_530(host):
    mark = marker()
    result = send(port(host), ["bob@example.org"], mark, mail_from=ALICE)
    assert (result.mail.code, result.mail.lines[-1][:5]) == (530, "5.7.0"), result.mail
    assert result.data is None
    host.assert_nothing(mark)


# ---------------------------------------------------------------------------------------------- sender binding


@pytest.fixture(scope="module")
def alice(host):
    """One logged-in session shared by the sender tests (each ends with RSET): argon2 is slow on purpose."""
    with login_session(host) as session:
        yield session


@pytest.mark.parametrize("sender", [ALICE, "Alice@Example.ORG", "info@example.org", "sales@example.org"])
def test_sender_may_be_the_login_or_an_alias_of_it(alice, sender):
    reply = alice.cmd(f"MAIL FROM:<{sender}>")
    assert (reply.code, reply.lines[-1][:5]) == (250, "2.1.0"), reply
    assert alice.cmd("RSET").code == 250


@pytest.mark.parametrize("sender", ["bob@example.org", "bobs-alias@example.org", "alice@remote.example",
                                    "nobody@example.org", "alice%remote.example@example.org"])
def test_sender_that_is_not_the_login_is_refused_553_5_7_1(alice, sender):
    reply = alice.cmd(f"MAIL FROM:<{sender}>")
    assert reply.code == 553 and reply.lines[-1][:5] in ("5.7.1", "5.1.3"), reply
    if sender == "bob@example.org":
        assert reply.lines[-1][:5] == "5.7.1"
    assert alice.cmd("RCPT TO:<friend@remote.example>").code == 503
    assert alice.cmd("DATA").code == 503
    assert alice.cmd("RSET").code == 250


def test_authenticated_relay_to_a_remote_domain_is_queued(host):
    mark = marker()
    with login_session(host) as session:
        assert session.cmd(f"MAIL FROM:<{ALICE}>").code == 250
        assert session.cmd("RCPT TO:<friend@remote.example>").code == 250
        assert session.cmd("RCPT TO:<other@elsewhere.example>").code == 250
        assert session.cmd("DATA").code == 354
        session.send(message(mark) + b".\r\n")
        reply = session.reply()
    assert reply.code == 250, reply
    host.assert_on_disk(reply.text.rsplit(" ", 1)[1], mark)
    [got] = host.wait_sink(host.sinks[0], mark)
    assert sorted(got.rcpt_tos) == ["friend@remote.example", "other@elsewhere.example"]
    host.wait_spool_empty()


# ---------------------------------------------------------------------------------------------- bans


def test_repeated_failures_ban_the_ip_454_4_7_0(host):
    banned, bystander = "127.0.0.66", "127.0.0.67"
    with RawSession("127.0.0.1", port(host), banned) as session:
        session.ehlo()
        failures = 0
        while (reply := session.cmd(f"AUTH PLAIN {plain(ALICE, f'guess-{failures}')}")).code == 535:
            failures += 1
            assert failures <= 30, "thirty wrong passwords and still no ban"
        assert (reply.code, reply.lines[-1][:5]) == (454, "4.7.0"), reply
        assert failures >= 3, f"banned after {failures} failures: a typo should not lock a user out"
        reply = session.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}")  # even the right password, now
        assert (reply.code, reply.lines[-1][:5]) == (454, "4.7.0"), reply
    with RawSession("127.0.0.1", port(host), banned) as session:  # a new connection does not help: 421 at once
        assert (session.greeting.code, session.greeting.lines[-1][:5]) == (421, "4.7.0"), session.greeting
    with login_session(host, bystander):
        pass  # another address still logs in


def test_passwords_never_reach_the_log(host):
    with RawSession("127.0.0.1", port(host), "127.0.0.43") as session:
        session.ehlo()
        assert session.cmd(f"AUTH PLAIN {plain(ALICE, 'secret-typo-7')}").code == 535
        assert session.cmd("AUTH LOGIN").code == 334
        assert session.cmd(base64.b64encode(ALICE.encode())).code == 334
        assert session.cmd(base64.b64encode(PASSWORD.encode())).code == 235
    log = host.server.log()
    assert "127.0.0.43" in log and ALICE in log  # the log did see both attempts
    for secret in (PASSWORD, "secret-typo-7", plain(ALICE, PASSWORD), base64.b64encode(PASSWORD.encode()).decode()):
        assert secret not in log, f"{secret!r} is in the server log"


# ---------------------------------------------------------------------------------------------- STARTTLS required


def test_strict_submission_requires_starttls_before_auth(strict):
    with RawSession("127.0.0.1", port(strict)) as session:
        features = " ".join(session.ehlo().lines)
        assert "AUTH" not in features and "STARTTLS" in features
        reply = session.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}")
        assert reply.code == 530 and reply.has_enhanced_code(), reply
        reply = session.cmd(f"MAIL FROM:<{ALICE}>")
        assert reply.code == 530 and reply.has_enhanced_code(), reply
        session.starttls(tls_context(strict), strict.server.config["hostname"])
        features = " ".join(session.ehlo().lines)
        assert "AUTH" in features
        reply = session.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}")
        assert reply.code == 235, reply


def test_strict_submission_swaks_tls_auth_relays(strict):
    mark = marker()
    done = swaks("--server", f"127.0.0.1:{port(strict)}", "-tls", "--tls-verify", "--tls-ca-path",
                 str(strict.server.data_dir / "tls" / "selfsigned.crt"), "-a", "LOGIN", "-au", ALICE,
                 "-ap", PASSWORD, "--from", ALICE, "--to", "friend@remote.example",
                 "--header", f"Subject: strict {mark}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "~> AUTH LOGIN" in done.stdout
    [got] = strict.wait_sink(strict.sinks[0], mark)
    assert got.rcpt_tos == ("friend@remote.example",)


def test_strict_submissions_port_465_implicit_tls(strict):
    mark = marker()
    context = tls_context(strict)
    context.check_hostname = False  # smtplib would check "127.0.0.1"; the chain is still verified
    with smtplib.SMTP_SSL("127.0.0.1", port(strict, "submissions"), context=context) as client:
        client.ehlo()
        assert "auth" in client.esmtp_features and not client.has_extn("starttls")
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, ["friend@remote.example"], message(mark)) == {}
    strict.wait_sink(strict.sinks[0], mark)


def test_strict_port_25_still_offers_no_auth(strict):
    with RawSession("127.0.0.1", strict.server.smtp_port) as session:
        session.ehlo()
        session.starttls(tls_context(strict), strict.server.config["hostname"])
        assert "AUTH" not in " ".join(session.ehlo().lines)
        assert session.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}").code == 502
