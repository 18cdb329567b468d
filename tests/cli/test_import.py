"""`mailfleet import maildir|mbox` through the real console entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import argon2
import pytest

from appliance.store import MailStore

USER = "carol@example.org"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    password_hash = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")
    path = tmp_path / "mailfleet.yml"
    path.write_text(
        "hostname: mx.example.org\n"
        f"data_dir: {tmp_path / 'data'}\n"
        "roles: [primary]\n"
        "primary:\n"
        "  domains: [example.org]\n"
        "  users:\n"
        f"    - {{address: {USER}, password_hash: '{password_hash}', quota: 0}}\n"
    )
    return path


def mailfleet(config: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(config), *argv],
                          capture_output=True, text=True, timeout=120)


def _write(path: Path, data: bytes, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def _dovecot_maildir(root: Path) -> None:
    """A Maildir as Dovecot leaves it: Maildir++ folders, keywords file, uidlist, LF line ends."""
    for folder in ("", ".Sent", ".Lists.python", ".Entw&APw-rfe"):
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    (root / "dovecot-keywords").write_text("0 $Forwarded\n1 Work\n")
    (root / "dovecot-uidlist").write_text("3 V1 N3 G0\n1 :1600000002.b.host\n2 :1600000001.a.host\n")
    t1 = datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC).timestamp()
    _write(root / "cur" / "1600000001.a.host:2,Sa", b"Subject: second by uid\n\nB\n", t1)
    _write(root / "cur" / "1600000002.b.host:2,FRb", b"Subject: first by uid\n\nA\n", t1 - 100)
    _write(root / "new" / "1600000003.c.host", b"Subject: unread\n\nC\n", t1 + 100)
    _write(root / ".Sent" / "cur" / "1600000004.d.host:2,S", b"Subject: sent\n\nD\n", t1)
    _write(root / ".Lists.python" / "cur" / "1600000005.e.host:2,", b"Subject: list\n\nE\n", t1)
    _write(root / ".Entw&APw-rfe" / "cur" / "1600000006.f.host:2,D", b"Subject: draft\n\nF\n", t1)


def _subjects(store: MailStore, folder: str) -> list[tuple[bytes, frozenset[str]]]:
    account = store.account(USER)
    out = []
    for info in account.messages(folder):
        data = info.path.read_bytes()
        out.append((data.split(b"\r\n")[0], info.flags))
    return out


def test_import_dovecot_maildir_keeps_folders_flags_dates_and_order(config_file: Path, tmp_path: Path) -> None:
    source = tmp_path / "Maildir"
    _dovecot_maildir(source)
    result = mailfleet(config_file, "import", "maildir", str(source), "--user", USER)
    assert result.returncode == 0, result.stderr
    assert "imported 6 message(s)" in result.stdout
    store = MailStore(tmp_path / "data" / "mail")
    assert _subjects(store, "INBOX") == [
        (b"Subject: first by uid", frozenset({"\\Flagged", "\\Answered", "Work"})),
        (b"Subject: second by uid", frozenset({"\\Seen", "$Forwarded"})),
        (b"Subject: unread", frozenset()),
    ]
    assert _subjects(store, "Sent") == [(b"Subject: sent", frozenset({"\\Seen"}))]
    assert _subjects(store, "Lists/python") == [(b"Subject: list", frozenset())]
    assert _subjects(store, "Entwürfe") == [(b"Subject: draft", frozenset({"\\Draft"}))]
    info = store.account(USER).messages("INBOX")[1]
    assert info.internal_date == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)
    assert info.path.read_bytes() == b"Subject: second by uid\r\n\r\nB\r\n"  # CRLF for IMAP
    store.close()


MBOX = b"""From alice@example.net Tue Jul 23 19:39:23 2002
From: alice@example.net
Subject: one
Status: RO
X-Status: A

Hello
>From the start of a line (escaped)
>>From twice escaped

From bob@example.net Wed Jul 24 08:00:00 2002
From: bob@example.net
Subject: two
Status: O
X-Keywords: $Label1 Work

Second body

From carol@example.net Thu Jul 25 10:00:00 2002
From: carol@example.net
Subject: three
X-Status: F

From here on this line is body text, not a separator (no blank line before it).
"""


def test_import_mbox_keeps_flags_and_from_line_dates(config_file: Path, tmp_path: Path) -> None:
    source = tmp_path / "old.mbox"
    source.write_bytes(MBOX)
    result = mailfleet(config_file, "import", "mbox", str(source), "--user", USER, "--folder", "Old/2002")
    assert result.returncode == 0, result.stderr
    assert "imported 3 message(s)" in result.stdout and "Old/2002 3" in result.stdout
    store = MailStore(tmp_path / "data" / "mail")
    account = store.account(USER)
    infos = account.messages("Old/2002")
    assert [i.flags for i in infos] == [frozenset({"\\Seen", "\\Answered"}), frozenset({"$Label1", "Work"}),
                                        frozenset({"\\Flagged"})]
    assert infos[0].internal_date == datetime(2002, 7, 23, 19, 39, 23, tzinfo=UTC)
    first = infos[0].path.read_bytes()
    assert first == (b"From: alice@example.net\r\nSubject: one\r\n\r\nHello\r\n"
                     b"From the start of a line (escaped)\r\n>From twice escaped\r\n")
    assert b"From here on" in infos[2].path.read_bytes()
    store.close()


def test_import_refuses_unknown_user_and_bad_sources(config_file: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = mailfleet(config_file, "import", "maildir", str(tmp_path / "empty"), "--user", "nobody@example.org")
    assert result.returncode == 2 and "no such user" in result.stderr
    result = mailfleet(config_file, "import", "maildir", str(tmp_path / "empty"), "--user", USER)
    assert result.returncode == 2 and "not a Maildir" in result.stderr
    (tmp_path / "notmbox").write_text("hello\n")
    result = mailfleet(config_file, "import", "mbox", str(tmp_path / "notmbox"), "--user", USER)
    assert result.returncode == 2 and "not an mbox file" in result.stderr
    result = mailfleet(config_file, "import", "mbox", str(tmp_path / "missing"), "--user", USER)
    assert result.returncode == 2 and "missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_stops_at_quota(config_file: Path, tmp_path: Path) -> None:
    store = MailStore(tmp_path / "data" / "mail")
    store.set_quota(USER, 60)
    store.close()
    source = tmp_path / "old.mbox"
    source.write_bytes(MBOX)
    result = mailfleet(config_file, "import", "mbox", str(source), "--user", USER)
    assert result.returncode == 1 and "quota exceeded" in result.stderr


def test_import_beside_a_running_server_shares_the_mailbox_with_smtp(mailfleet_factory, tmp_path: Path) -> None:
    """The store is safe across processes: mail arriving by SMTP while the import runs, and after it, lands in
    the same INBOX with its own UIDs, and nothing is lost or doubled."""
    import smtplib

    server = mailfleet_factory({"roles": ["primary"], "primary": {"domains": ["example.org"],
                                                                  "users": [{"address": USER}]}})

    def deliver(subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
            conn.sendmail("a@example.net", [USER], f"Subject: {subject}\r\n\r\nx\r\n".encode())

    deliver("before")
    server.wait_for(lambda: len(server.mailbox_files(USER)) == 1, what="the first SMTP message in the INBOX")
    source = tmp_path / "old.mbox"
    source.write_bytes(MBOX)
    result = mailfleet(server.config_path, "import", "mbox", str(source), "--user", USER)
    assert result.returncode == 0, result.stderr
    deliver("after")
    server.wait_for(lambda: len(server.mailbox_files(USER)) == 5, what="two SMTP and three imported messages")
    store = MailStore(server.data_dir / "mail")
    infos = store.account(USER).messages("INBOX")
    subjects = [info.path.read_bytes().split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for info in infos]
    store.close()
    assert subjects == [b"before", b"one", b"two", b"three", b"after"]
    assert [info.uid for info in infos] == sorted({info.uid for info in infos})


def test_an_empty_maildir_imports_nothing_and_says_so(config_file: Path, tmp_path: Path) -> None:
    source = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (source / sub).mkdir(parents=True)
    result = mailfleet(config_file, "import", "maildir", str(source), "--user", USER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"imported 0 message(s), 0 bytes, into {USER} ")
