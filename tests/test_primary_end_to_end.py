"""The primary role as a user meets it: mail in by SMTP, read back by IMAP and POP3, sent by submission."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
import subprocess
import sys

import pytest


@pytest.fixture
def primary(mailfleet_factory):
    password_hash = subprocess.run(
        [sys.executable, "-m", "appliance.cli.main", "hash-password", "--password-stdin"], input="s3cret-Pass\n",
        capture_output=True, text=True, check=True).stdout.strip()
    return mailfleet_factory({
        "roles": ["primary"],
        "primary": {"domains": ["home.test"],
                    "users": [{"address": "alice@home.test", "password_hash": password_hash},
                              {"address": "bob@home.test", "password_hash": password_hash}],
                    "aliases": {"postmaster@home.test": ["alice@home.test"]}},
    }, services=("smtp", "submission", "submissions", "imap", "imaps", "pop3"))


def test_smtp_in_then_imap_and_pop3_read_the_same_message(primary) -> None:
    with smtplib.SMTP("127.0.0.1", primary.smtp_port, timeout=10) as conn:
        conn.sendmail("friend@far.test", ["postmaster@home.test"],
                      b"From: friend@far.test\r\nSubject: hello alice\r\nMessage-ID: <m1@far.test>\r\n\r\nHi!\r\n")
    primary.wait_for(lambda: len(primary.mailbox_files("alice@home.test")) == 1, what="local delivery")

    imap = imaplib.IMAP4("127.0.0.1", primary.ports["imap"])
    imap.login("alice@home.test", "s3cret-Pass")
    typ, data = imap.select("INBOX")
    assert typ == "OK" and data[0] == b"1"
    typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    assert b"Subject: hello alice" in data[0][1]
    imap.logout()

    pop = poplib.POP3("127.0.0.1", primary.ports["pop3"])
    pop.user("alice@home.test")
    pop.pass_("s3cret-Pass")
    count, _size = pop.stat()
    assert count == 1
    lines = pop.retr(1)[1]
    assert b"Subject: hello alice" in lines
    assert any(line.startswith(b"Received: from") for line in lines)
    pop.quit()


def test_imaps_and_submissions_speak_implicit_tls(primary) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed certificate made at first start
    with smtplib.SMTP_SSL("127.0.0.1", primary.ports["submissions"], context=context, timeout=10) as conn:
        conn.login("bob@home.test", "s3cret-Pass")
        conn.sendmail("bob@home.test", ["alice@home.test"], b"Subject: over TLS\r\n\r\nsecret\r\n")
    primary.wait_for(lambda: len(primary.mailbox_files("alice@home.test")) == 1, what="local delivery")
    imap = imaplib.IMAP4_SSL("127.0.0.1", primary.ports["imaps"], ssl_context=context)
    imap.login("alice@home.test", "s3cret-Pass")
    imap.select("INBOX", readonly=True)
    typ, data = imap.search(None, "SUBJECT", '"over TLS"')
    assert typ == "OK" and data[0] == b"1"
    imap.logout()


def test_submission_requires_auth_and_checks_the_sender(primary) -> None:
    with smtplib.SMTP("127.0.0.1", primary.ports["submission"], timeout=10) as conn:
        conn.ehlo("client.test")
        code, _ = conn.docmd("MAIL", "FROM:<bob@home.test>")
        assert code == 530
        conn.login("bob@home.test", "s3cret-Pass")
        code, reply = conn.docmd("MAIL", "FROM:<alice@home.test>")
        assert code == 553 and b"not an address of the authenticated user" in reply
        conn.rset()
        conn.sendmail("bob@home.test", ["alice@home.test"], b"Subject: from bob\r\n\r\nx\r\n")
    primary.wait_for(lambda: len(primary.mailbox_files("alice@home.test")) == 1, what="local delivery")
    assert b"with ESMTPA" in primary.mailbox_files("alice@home.test")[0].read_bytes()


def test_wrong_password_is_refused_everywhere(primary) -> None:
    imap = imaplib.IMAP4("127.0.0.1", primary.ports["imap"])
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("alice@home.test", "wrong")
    imap.logout()
    pop = poplib.POP3("127.0.0.1", primary.ports["pop3"])
    pop.user("alice@home.test")
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong")
    pop.quit()
    with smtplib.SMTP("127.0.0.1", primary.ports["submission"], timeout=10) as conn, \
            pytest.raises(smtplib.SMTPAuthenticationError):
        conn.login("alice@home.test", "wrong")
