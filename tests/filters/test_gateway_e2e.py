"""The content filters as a mail administrator meets them: a running Mailfleet (tests/peers/mailfleet.py) with
the real scanners, real SMTP clients sending, and the mail read back where a user would find it (IMAP) or the
quarantine directory."""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
import sys

import pytest

PASSWORD = "s3cret-Pass"
FORGED = (b"From: friend@far.test\r\nSubject: forged\r\nX-Spam-Flag: YES\r\nX-Spam-Score: 99.0\r\n"
          b"X-Mailfleet-Scan: gw.test; spamassassin=spam score=99.0\r\n\r\nI say I am spam.\r\n")
GATEWAY = "127.0.0.2"  # the trusted gateway's address; the untrusted client sends from 127.0.0.1


def _hash() -> str:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "hash-password", "--password-stdin"],
                          input=PASSWORD + "\n", capture_output=True, text=True, check=True).stdout.strip()


def _primary(mailfleet_factory, filters: dict, name: str = "mf", **more: object):
    return mailfleet_factory({
        "roles": ["primary"], **more,
        "primary": {"domains": ["home.test", "strict.test"],
                    "users": [{"address": "alice@home.test", "password_hash": _hash()},
                              {"address": "sam@strict.test", "password_hash": _hash()}]},
        "filters": filters,
    }, services=("smtp", "imap"), name=name)


def _send(server, data: bytes, rcpts: tuple[str, ...] = ("alice@home.test",), source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30, source_address=(source, 0)) as conn:
        conn.sendmail("friend@far.test", list(rcpts), data)


def _folder(server, folder: str, user: str = "alice@home.test") -> list[bytes]:
    """The messages of ``folder`` as the user reads them over IMAP (whole, in UID order)."""
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"])
    try:
        imap.login(user, PASSWORD)
        typ, _ = imap.select(folder, readonly=True)
        assert typ == "OK"
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [part[1] for part in data if isinstance(part, tuple)]
    finally:
        imap.logout()


def _headers(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[0]


def test_forged_spam_headers_from_anyone_but_a_trusted_gateway_are_removed(mailfleet_factory) -> None:
    server = _primary(mailfleet_factory, {"trusted_gateways": [f"{GATEWAY}/32"]})
    _send(server, FORGED)
    server.wait_for(lambda: server.mailbox_files("alice@home.test"), what="delivery into INBOX")
    [message] = _folder(server, "INBOX")
    assert b"X-Spam" not in _headers(message) and b"X-Mailfleet-Scan" not in _headers(message)
    assert message.endswith(b"I say I am spam.\r\n")
    assert _folder(server, "Junk") == []

    _send(server, FORGED.replace(b"Subject: forged", b"Subject: from the gateway"), source=GATEWAY)
    server.wait_for(lambda: server.mailbox_files("alice@home.test", "Junk"), what="delivery into Junk")
    [junk] = _folder(server, "Junk")
    assert b"Subject: from the gateway" in junk and b"X-Spam-Flag: YES" in _headers(junk)
    assert len(_folder(server, "INBOX")) == 1


def test_spam_for_a_user_without_a_junk_folder_goes_to_the_inbox_and_says_so(mailfleet_factory) -> None:
    # One process: the account IMAP opened is the one delivery uses (a process opening an account afresh
    # creates the default folders again, Junk among them).
    server = _primary(mailfleet_factory, {"trusted_gateways": [f"{GATEWAY}/32"]}, smtp={"workers": 0})
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"])
    imap.login("alice@home.test", PASSWORD)
    assert imap.delete("Junk")[0] == "OK"
    imap.logout()
    mark = server.log_mark()
    _send(server, FORGED, source=GATEWAY)
    server.wait_for_log("alice@home.test has no folder 'Junk'; delivering into INBOX", since=mark)
    [message] = _folder(server, "INBOX")
    assert b"X-Spam-Flag: YES" in _headers(message)
