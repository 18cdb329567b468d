"""The content filters as a mail administrator meets them: a running Mailfleet (tests/peers/mailfleet.py) with
the real scanners, real SMTP clients sending, and the mail read back where a user would find it (IMAP) or the
quarantine directory."""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import subprocess
import sys

import dkim
import pytest
from peers.clamd import EICAR, EICAR_FOUND
from peers.milter import start_opendkim

PASSWORD = "s3cret-Pass"
FORGED = (b"From: friend@far.test\r\nSubject: forged\r\nX-Spam-Flag: YES\r\nX-Spam-Score: 99.0\r\n"
          b"X-Mailfleet-Scan: gw.test; spamassassin=spam score=99.0\r\n\r\nI say I am spam.\r\n")
GATEWAY = "127.0.0.2"  # the trusted gateway's address; the untrusted client sends from 127.0.0.1
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAM = b"From: friend@far.test\r\nSubject: buy now\r\nMessage-ID: <spam@far.test>\r\n\r\n" + GTUBE + b"\r\n"
HAM = (b"From: friend@far.test\r\nSubject: lunch\r\nMessage-ID: <ham@far.test>\r\n\r\n"
       b"Shall we meet for lunch on Tuesday at noon?\r\n")


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


def _spamassassin(spamd, **entry: object) -> dict:
    return {"type": "spamassassin", "address": f"{spamd.address}:{spamd.port}", **entry}


def _score(headers: str) -> float:
    found = re.search(r"^X-Spam-Score: (\S+)\r?$", headers, re.MULTILINE)
    assert found is not None, headers
    return float(found[1])


def _unfolded(message: bytes) -> str:
    """The header section with its folds undone (RFC 5322 §2.2.3; a fold's white space kept as one space)."""
    return re.sub(rb"\r\n[ \t]+", b" ", _headers(message)).decode()


def test_spam_goes_to_junk_and_ham_to_the_inbox_each_with_its_headers(mailfleet_factory, spamd) -> None:
    server = _primary(mailfleet_factory, {"scanners": [_spamassassin(spamd)],
                                          "spam": {"add_header": 5.0, "reject": None}})
    _send(server, SPAM)
    _send(server, HAM)
    server.wait_for(lambda: server.mailbox_files("alice@home.test", "Junk") and
                    server.mailbox_files("alice@home.test"), what="delivery into Junk and INBOX")
    [junk] = _folder(server, "Junk")
    assert b"Message-ID: <spam@far.test>" in junk
    headers = _unfolded(junk)
    score = _score(headers)  # GTUBE's 1000 and whatever else hit
    assert "X-Spam-Flag: YES" in headers and score >= 1000
    status = re.search(r"X-Spam-Status: Yes, score=(\S+) required=5.0 tests=(\S+)", headers)
    assert status is not None and float(status[1]) == score and "GTUBE" in status[2].split(",")
    assert status[2].startswith("GTUBE,")  # the rules comma-separated, as SpamAssassin writes them
    assert f"X-Mailfleet-Scan: mf.test.example; spamassassin=spam score={score:.1f}" in headers
    [inbox] = _folder(server, "INBOX")
    assert b"Message-ID: <ham@far.test>" in inbox
    headers = _unfolded(inbox)
    assert "X-Spam-Flag: NO" in headers and "X-Spam-Status: No, score=" in headers


def test_spam_above_the_quarantine_threshold_is_held_not_delivered(mailfleet_factory, spamd) -> None:
    server = _primary(mailfleet_factory, {"scanners": [_spamassassin(spamd)],
                                          "spam": {"add_header": 5.0, "quarantine": 20.0, "reject": None}})
    _send(server, SPAM)
    held = server.data_dir / "quarantine" / "msg"
    server.wait_for(lambda: held.exists() and list(held.iterdir()), what="a message in the quarantine")
    [path] = list(held.iterdir())
    assert GTUBE in path.read_bytes()
    listing = server.cli("quarantine", "list")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"spam score \d+\.\d >= 20.0 \(spamassassin\)", listing.stdout), listing.stdout
    assert server.mailbox_files("alice@home.test") == []
    assert server.mailbox_files("alice@home.test", "Junk") == []


def test_spam_above_reject_is_refused_in_the_session(mailfleet_factory, spamd) -> None:
    server = _primary(mailfleet_factory, {"scanners": [_spamassassin(spamd)]})
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(server, SPAM)
    assert refused.value.smtp_code == 550
    assert re.fullmatch(rb"5\.7\.1 Message refused as spam \(score \d+\.\d\)", refused.value.smtp_error)


def test_recipients_with_different_policies_go_in_separate_transactions(mailfleet_factory, spamd) -> None:
    server = _primary(mailfleet_factory, {"scanners": [_spamassassin(spamd)],
                                          "spam": {"add_header": 5.0, "reject": None},
                                          "domains": {"strict.test": {"reject": 8.0}}})
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as conn:
        conn.ehlo("client.test")
        assert conn.mail("friend@far.test")[0] == 250
        assert conn.rcpt("alice@home.test")[0] == 250
        assert conn.rcpt("sam@strict.test") == (
            452, b"4.5.3 Recipients with a different spam policy go in a separate transaction")
        assert conn.data(SPAM)[0] == 250  # for alice, tagged into Junk
        assert conn.mail("friend@far.test")[0] == 250
        assert conn.rcpt("sam@strict.test")[0] == 250
        code, reply = conn.data(SPAM)
        assert code == 550 and reply.startswith(b"5.7.1 Message refused as spam (score ")
    server.wait_for(lambda: server.mailbox_files("alice@home.test", "Junk"), what="alice's copy in Junk")
    assert server.mailbox_files("sam@strict.test") == [] and server.mailbox_files("sam@strict.test", "Junk") == []


def test_a_message_above_max_scan_size_is_delivered_saying_it_was_not_scanned(mailfleet_factory, spamd) -> None:
    server = _primary(mailfleet_factory, {"scanners": [_spamassassin(spamd, max_scan_size=100)]})
    _send(server, SPAM)
    server.wait_for(lambda: server.mailbox_files("alice@home.test"), what="delivery into INBOX")
    [message] = _folder(server, "INBOX")
    headers = _unfolded(message)
    assert "X-Mailfleet-Scan: mf.test.example; spamassassin=skipped (larger than 100 bytes)" in headers
    assert "X-Spam-Flag: NO" in headers and "X-Spam-Score" not in headers


def test_a_gateway_tags_spam_and_the_primary_behind_it_files_it_into_junk(mailfleet_factory, spamd) -> None:
    primary = _primary(mailfleet_factory, {"trusted_gateways": ["127.0.0.1/32"]}, name="primary")
    gateway = mailfleet_factory({
        "roles": ["incoming_gateway"],
        "incoming_gateway": {"domains": {"home.test": {"destinations": [f"127.0.0.1:{primary.smtp_port}"]}}},
        "filters": {"scanners": [_spamassassin(spamd)], "spam": {"add_header": 5.0, "reject": None}},
    }, name="gateway")
    _send(gateway, SPAM)
    _send(gateway, FORGED)  # its forged headers go at the gateway; its own say it is not spam
    primary.wait_for(lambda: primary.mailbox_files("alice@home.test", "Junk") and
                     primary.mailbox_files("alice@home.test"), what="both messages at the primary")
    [junk] = _folder(primary, "Junk")
    assert "X-Mailfleet-Scan: gateway.test.example; spamassassin=spam score=" in _unfolded(junk)
    [inbox] = _folder(primary, "INBOX")
    assert b"Subject: forged" in inbox and "X-Spam-Flag: NO" in _unfolded(inbox)
    assert "X-Spam-Score: 99.0" not in _unfolded(inbox)


def test_a_virus_is_refused_at_smtp_naming_the_signature_and_clean_mail_passes_both(mailfleet_factory, clamd,
                                                                                    spamd) -> None:
    server = _primary(mailfleet_factory, {"scanners": [{"type": "clamav", "address": f"unix:{clamd.socket_path}"},
                                                       _spamassassin(spamd)]})
    attachment = (b"From: friend@far.test\r\nSubject: see attached\r\nMIME-Version: 1.0\r\n"
                  b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                  b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                  b"filename=eicar.com\r\n\r\n" + EICAR + b"\r\n--b1--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(server, attachment)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        554, f"5.7.1 Message refused: virus {EICAR_FOUND} found".encode())
    _send(server, HAM)
    server.wait_for(lambda: server.mailbox_files("alice@home.test"), what="delivery into INBOX")
    [message] = _folder(server, "INBOX")
    headers = _unfolded(message)
    assert re.search(r"X-Mailfleet-Scan: mf.test.example; clamav=clean; spamassassin=ham score=-?\d+\.\d", headers)
    assert "X-Spam-Flag: NO" in headers


def test_a_reload_swaps_the_scanners_and_a_stop_closes_them_cleanly(mailfleet_factory, spamd) -> None:
    server = _primary(mailfleet_factory, {"scanners": [_spamassassin(spamd)],
                                          "spam": {"add_header": 5.0, "reject": None}})
    _send(server, SPAM)
    server.wait_for(lambda: server.mailbox_files("alice@home.test", "Junk"), what="delivery into Junk")
    config = dict(server.config)
    config["filters"] = {"scanners": [_spamassassin(spamd, name="sa")], "spam": {"reject": 15.0}}
    mark = server.log_mark()
    server.reload(config)
    server.wait_for_log("config reloaded from", since=mark)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(server, SPAM)
    assert refused.value.smtp_code == 550
    assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def _milter(milter) -> dict:
    return {"type": "milter", "name": "scripted", "address": f"inet:{milter.address.host}:{milter.address.port}"}


def test_rspamd_and_a_milter_at_once_milter_changes_made_rspamd_rejects_gtube(mailfleet_factory, rspamd,
                                                                             scripted_milter) -> None:
    milter = scripted_milter({"on": {
        "envrcpt": [{"match": "sam@", "result": "reject", "reply": ["550", "5.7.1", "not for sam"]}],
        "eom": {"do": [["addheader", "X-Milter", "seen"], ["chgheader", "Subject", 1, "[checked] lunch"]]}}})
    server = _primary(mailfleet_factory, {"scanners": [
        {"type": "rspamd", "address": f"unix:{rspamd.socket_path}"}, _milter(milter)]})
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as conn:
        conn.ehlo("client.test")
        assert conn.mail("friend@far.test")[0] == 250
        assert conn.rcpt("sam@strict.test") == (550, b"5.7.1 not for sam")
        assert conn.rcpt("alice@home.test")[0] == 250
        assert conn.data(HAM)[0] == 250
        assert conn.mail("friend@far.test")[0] == 250
        assert conn.rcpt("alice@home.test")[0] == 250
        code, reply = conn.data(SPAM)
        assert code == 550 and reply.startswith(b"5.7.1 "), reply
    server.wait_for(lambda: server.mailbox_files("alice@home.test"), what="delivery into INBOX")
    [message] = _folder(server, "INBOX")
    headers = _unfolded(message)
    assert "Subject: [checked] lunch" in headers and "Subject: lunch" not in headers
    assert headers.endswith("X-Milter: seen")  # SMFIR_ADDHEADER: at the end of the header section
    assert re.search(r"X-Mailfleet-Scan: mf.test.example; rspamd=ham score=-?\d+\.\d[^;]*; scripted=clean",
                     headers), headers
    assert message.endswith(b"Shall we meet for lunch on Tuesday at noon?\r\n")


def test_a_milter_that_asks_for_the_quarantine_gets_it(mailfleet_factory, scripted_milter) -> None:
    milter = scripted_milter({"on": {"eom": {"do": [["quarantine", "looks odd"]]}}})
    server = _primary(mailfleet_factory, {"scanners": [_milter(milter)]})
    _send(server, HAM)
    held = server.data_dir / "quarantine" / "msg"
    server.wait_for(lambda: held.exists() and list(held.iterdir()), what="a message in the quarantine")
    listing = server.cli("quarantine", "list")
    assert listing.returncode == 0 and "looks odd" in listing.stdout, listing
    assert server.mailbox_files("alice@home.test") == []


def test_opendkim_signs_through_the_gateway_and_the_signature_verifies_in_the_mailbox(mailfleet_factory,
                                                                                     tmp_path) -> None:
    opendkim = start_opendkim(tmp_path / "opendkim", domain="home.test")
    try:
        server = _primary(mailfleet_factory, {"scanners": [
            {"type": "milter", "name": "dkim", "address": f"inet:127.0.0.1:{opendkim.address.port}"}]})
        _send(server, b"From: alice@home.test\r\nTo: alice@home.test\r\nSubject: signed\r\n"
                      b"Message-ID: <dkim@home.test>\r\nDate: Thu, 03 Dec 2026 12:00:00 +0000\r\n\r\n"
                      b"Signed on the way in.\r\n")
        server.wait_for(lambda: server.mailbox_files("alice@home.test"), what="delivery into INBOX")
    finally:
        opendkim.stop()
    [message] = _folder(server, "INBOX")
    assert "X-Mailfleet-Scan: mf.test.example; dkim=clean" in _unfolded(message)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(opendkim.public_key)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == b"mail._domainkey.home.test" else None

    assert b"DKIM-Signature: " in _headers(message)
    assert dkim.verify(message, dnsfunc=dns)
    assert not dkim.verify(message.replace(b"Signed on the way in.", b"Changed on the way."), dnsfunc=dns)
