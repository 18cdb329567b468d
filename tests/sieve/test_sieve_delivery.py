"""Sieve at local delivery, through the real service: mail in by SMTP, the scripts' effects read back from the
mailboxes by IMAP and from the files, the failures from the log."""

from __future__ import annotations

import email
import imaplib
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.sieve.storage import ScriptStore

ADDRESS = "127.0.53.1"
PASSWORD = "s3cret-Pass"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "hash-password", "--password-stdin"],
                          input=PASSWORD + "\n", capture_output=True, text=True, check=True).stdout.strip()


def _config(password_hash: str, **sieve: object) -> dict:
    users = [{"address": f"{name}@home.test", "password_hash": password_hash} for name in ("alice", "bob", "carol")]
    config: dict = {"roles": ["primary"], "primary": {"domains": ["home.test"], "users": users}}
    if sieve:
        config["sieve"] = sieve
    return config


@pytest.fixture
def primary(mailfleet_factory, password_hash):
    return mailfleet_factory(_config(password_hash), services=("smtp", "submission", "imap"), address=ADDRESS)


def _script(server, user: str, text: str, name: str = "main") -> None:
    store = ScriptStore(server.data_dir / "sieve")
    store.write(user, name, text)
    store.activate(user, name)


def _send(server, subject: str, to: str = "bob@home.test", sender: str = "friend@far.test",
          extra: str = "") -> None:
    with smtplib.SMTP(ADDRESS, server.smtp_port, timeout=10) as conn:
        conn.sendmail(sender, [to], (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
                                     f"Message-ID: <{abs(hash(subject))}@far.test>\r\n{extra}\r\nbody\r\n").encode())


def _submit(server, subject: str, sender: str = "alice@home.test", to: str = "bob@home.test") -> None:
    with smtplib.SMTP(ADDRESS, server.ports["submission"], timeout=10) as conn:
        conn.login(sender, PASSWORD)
        conn.sendmail(sender, [to], (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
                                     f"Message-ID: <{abs(hash(subject))}@home.test>\r\n\r\nhello\r\n").encode())


def _flags(server, user: str, folder: str) -> list[bytes]:
    imap = imaplib.IMAP4(ADDRESS, server.ports["imap"])
    imap.login(user, PASSWORD)
    typ, _ = imap.select(folder, readonly=True)
    assert typ == "OK"
    typ, data = imap.fetch("1:*", "(FLAGS)")
    imap.logout()
    return [item for item in data if isinstance(item, bytes)]


def test_fileinto_create_with_flags_redirect_copy_and_a_broken_script(primary) -> None:
    _script(primary, "bob@home.test", 'require ["fileinto", "mailbox", "imap4flags", "copy"];\n'
                                      'if header :contains "subject" "[list]" {\n'
                                      '  fileinto :create :flags ["\\\\Seen", "$List"] "Lists/Python"; stop;\n'
                                      '}\n'
                                      'if header :contains "subject" "share" { redirect :copy "carol@home.test"; }\n'
                                      'if header :contains "subject" "nowhere" { fileinto "Missing"; }\n')
    _send(primary, "[list] weekly digest")
    assert len(primary.mailbox_files("bob@home.test", "Lists.Python")) == 1
    flags = _flags(primary, "bob@home.test", "Lists/Python")
    assert b"\\Seen" in flags[0] and b"$List" in flags[0]
    assert primary.mailbox_files("bob@home.test") == []

    _send(primary, "please share this")
    assert len(primary.mailbox_files("bob@home.test")) == 1  # :copy keeps it
    primary.wait_for(lambda: len(primary.mailbox_files("carol@home.test")) == 1, what="the redirect to carol")
    copy = primary.mailbox_files("carol@home.test")[0].read_bytes()
    assert b"Subject: please share this" in copy and b"Delivered-To: bob@home.test" in copy

    _send(primary, "goes nowhere")  # fileinto a folder that does not exist, without :create: INBOX
    assert len(primary.mailbox_files("bob@home.test")) == 2
    assert "no folder 'Missing'" in primary.log()

    _script(primary, "alice@home.test", 'require "fileinto";\n\nfileinot "Spam";\n')  # stored without a check
    _send(primary, "still arrives", to="alice@home.test")
    assert len(primary.mailbox_files("alice@home.test")) == 1
    assert "user=alice@home.test sieve failed, delivering into INBOX: script 'main' line 3: unknown command " \
           "'fileinot'" in primary.log()


def test_vacation_once_per_sender_never_to_a_list_and_reject_with_a_dsn(primary) -> None:
    _script(primary, "bob@home.test", 'require "vacation";\n'
                                      'vacation :days 7 :subject "Out of office" "I am away until Monday.";\n')
    _submit(primary, "first question")
    primary.wait_for(lambda: len(primary.mailbox_files("alice@home.test")) == 1, what="the vacation reply")
    _submit(primary, "second question")
    primary.wait_for(lambda: len(primary.mailbox_files("bob@home.test")) == 2, what="bob's second message")
    primary.wait_for(lambda: "answered <alice@home.test> within 7 days" in primary.log(), what="no second reply")
    replies = primary.mailbox_files("alice@home.test")
    assert len(replies) == 1
    reply = email.message_from_bytes(replies[0].read_bytes())
    assert reply["Subject"] == "Out of office" and reply["Auto-Submitted"].startswith("auto-replied")
    assert reply["Return-Path"] == "<>"
    assert reply["In-Reply-To"] == f"<{abs(hash('first question'))}@home.test>"
    assert "I am away until Monday." in reply.get_payload()

    _send(primary, "list mail", sender="news@lists.far.test", extra="List-Id: <news.lists.far.test>\r\n")
    primary.wait_for(lambda: "vacation not sent (mailing-list message)" in primary.log(), what="the list refusal")

    _script(primary, "carol@home.test", 'require "reject";\n'
                                        'if header :contains "subject" "offer" { reject "No offers, thanks."; }\n'
                                        'if header :contains "subject" "noise" { discard; }\n')
    _submit(primary, "a special offer", to="carol@home.test")
    primary.wait_for(lambda: len(primary.mailbox_files("alice@home.test")) == 2, what="the rejection's DSN")
    dsn = b"".join(p.read_bytes() for p in primary.mailbox_files("alice@home.test"))
    assert b"No offers, thanks." in dsn and b"multipart/report" in dsn
    _submit(primary, "some noise", to="carol@home.test")
    primary.wait_for(lambda: "user=carol@home.test sieve: discarded" in primary.log(), what="the discard")
    assert primary.mailbox_files("carol@home.test") == []


def test_global_before_files_spam_and_the_users_script_then_does_not_run(mailfleet_factory, password_hash,
                                                                          tmp_path: Path) -> None:
    before = tmp_path / "before.sieve"
    before.write_text('require "fileinto";\nif header :contains "x-spam" "yes" { fileinto "Junk"; }\n')
    server = mailfleet_factory(_config(password_hash, global_before=str(before)), services=("smtp",),
                               address=ADDRESS)
    _script(server, "bob@home.test", "discard;")
    _send(server, "spam", extra="X-Spam: yes\r\n")
    assert len(server.mailbox_files("bob@home.test", "Junk")) == 1
    _send(server, "ham")  # the before script kept it: the user's script runs and discards
    server.wait_for(lambda: "sieve: discarded" in server.log(), what="the user's discard")
    assert server.mailbox_files("bob@home.test") == []
    assert len(server.mailbox_files("alice@home.test")) == 0
    _send(server, "spam for alice", to="alice@home.test", extra="X-Spam: yes\r\n")  # no script of her own
    assert len(server.mailbox_files("alice@home.test", "Junk")) == 1


def test_a_broken_global_script_is_a_config_error(mailfleet_factory, password_hash, tmp_path: Path) -> None:
    broken = tmp_path / "after.sieve"
    broken.write_text('require "fileinto";\nif true {\n  fileinto;\n}\n')
    server = mailfleet_factory(_config(password_hash, global_after=str(broken)), run=False, address=ADDRESS)
    checked = server.cli("check-config", "--no-host-check")
    assert checked.returncode == 2
    assert checked.stderr.strip() == f"mailfleet: sieve.global_after: {broken}: line 3: fileinto takes string"
    served = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(server.config_path),
                             "serve"], capture_output=True, text=True, timeout=60)
    assert served.returncode == 2 and f"{broken}: line 3" in served.stderr
