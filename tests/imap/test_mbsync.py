"""mbsync (isync, from Debian) syncing a mailbox both ways with our IMAP server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.imap.conftest import PASSWORD, ImapServer

MBSYNC = shutil.which("mbsync")


@pytest.fixture(autouse=True)
def _mbsync_installed() -> None:
    """A missing client is an install fault to report, not a test to skip."""
    if MBSYNC is None:
        pytest.fail("mbsync (Debian package isync) is not installed; `make apt` installs it")

MSG = b"From: ann@example.net\r\nTo: alice@example.org\r\nSubject: sync %d\r\nMessage-ID: <%d@x>\r\n\r\nbody\r\n"


def _config(tmp: Path, server: ImapServer) -> Path:
    local = tmp / "local"
    local.mkdir()
    cfg = tmp / "mbsyncrc"
    cfg.write_text(f"""
IMAPAccount test
Host {server.host}
Port {server.port}
User alice@example.org
Pass "{PASSWORD}"
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel test
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return cfg


def _run(cfg: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([MBSYNC, "-c", str(cfg), "-a"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(cfg.parent)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _norm(data: bytes) -> bytes:
    """mbsync stores LF line ends locally and adds an X-TUID header while syncing."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(line for line in lines if not line.startswith(b"X-TUID: "))


def _files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).iterdir())


def test_mbsync_syncs_both_ways(imap_server: ImapServer, tmp_path: Path) -> None:
    for i in range(3):
        imap_server.deliver(MSG % (i, i))
    imap_server.deliver(MSG % (10, 10), folder="Archive", flags=["\\Seen"])
    cfg = _config(tmp_path, imap_server)
    _run(cfg)
    local = tmp_path / "local"
    inbox = _files(local / "INBOX")
    assert len(inbox) == 3
    assert sorted(_norm(p.read_bytes()) for p in inbox) == sorted(_norm(MSG % (i, i)) for i in range(3))
    archived = _files(local / "Archive")
    assert len(archived) == 1 and archived[0].name.endswith(",S")  # \Seen came down as the S flag
    assert {p.name for p in local.iterdir()} >= {"INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"}

    # local changes: flag one as seen+flagged, delete another, add a new message and a new folder
    first = next(p for p in inbox if b"sync 0" in p.read_bytes())
    second = next(p for p in inbox if b"sync 1" in p.read_bytes())
    first.rename(first.parent.parent / "cur" / (first.name.split(":2,")[0] + ":2,FS"))
    second.rename(second.parent.parent / "cur" / (second.name.split(":2,")[0] + ":2,T"))
    (local / "INBOX" / "new" / "1700000000.local1.host").write_bytes(MSG % (20, 20))
    for sub in ("cur", "new", "tmp"):
        (local / "Projects" / sub).mkdir(parents=True)
    (local / "Projects" / "new" / "1700000001.local2.host").write_bytes(MSG % (30, 30))
    # a server-side change at the same time
    account = imap_server.store.account("alice@example.org")
    uid_of = {account.read("INBOX", u).split(b"Subject: ")[1].split(b"\r\n")[0]: u for u in account.uids("INBOX")}
    account.store_flags("INBOX", [uid_of[b"sync 2"]], ["\\Answered"], "add")
    _run(cfg)

    infos = {account.read("INBOX", m.uid).split(b"Subject: ")[1].split(b"\r\n")[0]: m
             for m in account.messages("INBOX")}
    assert set(infos) == {b"sync 0", b"sync 2", b"sync 20"}  # sync 1 was deleted (T + Expunge Both)
    assert infos[b"sync 0"].flags == {"\\Seen", "\\Flagged"}
    assert _norm(account.read("INBOX", infos[b"sync 20"].uid)) == _norm(MSG % (20, 20))
    assert [_norm(account.read("Projects", u)) for u in account.uids("Projects")] == [_norm(MSG % (30, 30))]
    answered = next(p for p in _files(local / "INBOX") if b"sync 2" in p.read_bytes())
    assert answered.name.endswith(":2,R")  # the server's \Answered came down

    # a third run changes nothing and loses nothing
    _run(cfg)
    assert len(account.uids("INBOX")) == 3 and len(_files(local / "INBOX")) == 3
