"""Full-text search in the running service: mail in by SMTP is indexed at delivery, SEARCH BODY finds it."""

from __future__ import annotations

import base64
import imaplib
import smtplib
import subprocess
import sys

from appliance.store.fts import FtsIndex

ADDRESS = "127.0.52.1"  # this piece's loopback range


def test_smtp_delivery_is_indexed_and_searched(mailfleet_factory) -> None:
    password_hash = subprocess.run(
        [sys.executable, "-m", "appliance.cli.main", "hash-password", "--password-stdin"], input="s3cret-Pass\n",
        capture_output=True, text=True, check=True).stdout.strip()
    server = mailfleet_factory({
        "roles": ["primary"],
        "imap": {"full_text_search": True, "fts_max_bytes": 4096, "fts_autoindex": True},
        "primary": {"domains": ["home.test"],
                    "users": [{"address": "alice@home.test", "password_hash": password_hash}]},
    }, services=("smtp", "imap"), address=ADDRESS)
    html = base64.b64encode("<p>Réunion <b>budget</b> 2027</p>".encode()) + b"\r\n"
    big = b"padding words\r\n" * 2000 + b"the last line\r\n"  # beyond fts_max_bytes: found by reading the file
    with smtplib.SMTP(ADDRESS, server.smtp_port, timeout=10) as conn:
        conn.sendmail("friend@far.test", ["alice@home.test"],
                      b"From: friend@far.test\r\nSubject: one\r\nMIME-Version: 1.0\r\nContent-Type: text/html;"
                      b" charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + html)
        conn.sendmail("friend@far.test", ["alice@home.test"], b"From: friend@far.test\r\nSubject: two\r\n\r\n" + big)
    account = server.data_dir / "mail" / "home.test" / "alice"
    server.wait_for(lambda: (account / "fts.sqlite").exists() and FtsIndex(account).stats()[0] == 2,
                    what="both messages indexed at delivery")

    imap = imaplib.IMAP4(ADDRESS, server.ports["imap"])
    try:
        imap.login("alice@home.test", "s3cret-Pass")
        imap.select("INBOX")
        assert imap.uid("SEARCH", "BODY", '"budget 2027"') == ("OK", [b"1"])
        assert imap.uid("SEARCH", "BODY", '"<b>"') == ("OK", [b""])
        assert imap.uid("SEARCH", "BODY", '"the last line"') == ("OK", [b"2"])
        assert imap.uid("SEARCH", "TEXT", '"subject: t"') == ("OK", [b"2"])
    finally:
        imap.logout()
