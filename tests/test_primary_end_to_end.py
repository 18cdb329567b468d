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


def test_local_mail_is_in_the_mailbox_when_the_250_arrives(primary) -> None:
    with smtplib.SMTP("127.0.0.1", primary.smtp_port, timeout=10) as conn:
        refused = conn.sendmail("friend@far.test", ["alice@home.test", "bob@home.test"],
                                b"From: friend@far.test\r\nSubject: at once\r\n\r\nHi both\r\n")
        assert refused == {}
        # No waiting: the 250 came after the mailboxes had the message, and the queue never held it.
        for user in ("alice@home.test", "bob@home.test"):
            files = primary.mailbox_files(user)
            assert len(files) == 1
            assert files[0].read_bytes().startswith(b"Return-Path: <friend@far.test>\r\nDelivered-To: " + user.encode())
        assert primary.queue_ids() == []


def test_a_mailbox_that_fails_leaves_its_copy_in_the_queue(primary) -> None:
    bob = primary.data_dir / "mail" / "home.test" / "bob"
    bob.mkdir(parents=True)
    (bob / "cur").write_text("not a directory: the store cannot open this mailbox")
    with smtplib.SMTP("127.0.0.1", primary.smtp_port, timeout=10) as conn:
        assert conn.sendmail("friend@far.test", ["alice@home.test", "bob@home.test"],
                             b"Subject: one fails\r\n\r\nx\r\n") == {}
    assert len(primary.mailbox_files("alice@home.test")) == 1
    ids = primary.queue_ids()
    assert len(ids) == 1
    shown = primary.cli("queue", "show", ids[0]).stdout
    assert "bob@home.test" in shown and "alice@home.test" not in shown

    (bob / "cur").unlink()
    primary.cli("queue", "flush")
    primary.wait_for(lambda: len(primary.mailbox_files("bob@home.test")) == 1, what="bob's copy after the repair")
    primary.wait_for(lambda: primary.queue_ids() == [], what="an empty queue")
    assert len(primary.mailbox_files("alice@home.test")) == 1  # not delivered twice
