"""fetchmail (Debian's, a client none of us wrote) against our POP3 server on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from .conftest import PASSWORD

FETCHMAIL = shutil.which("fetchmail")


@pytest.fixture(autouse=True)
def _fetchmail_installed() -> None:
    # Not a skip: a missing real client must fail the run (it is in the Makefile's APT_PACKAGES).
    assert FETCHMAIL is not None, "fetchmail is not installed: run `make apt`"


async def fetchmail(tmp_path: Path, port: int, cert: Path, tls: str, keep: bool) -> tuple[int, str]:
    """Run one fetchmail poll; every message is appended to tmp_path/delivered by its MDA."""
    rc = tmp_path / "fetchmailrc"
    tls_options = {"stls": "sslproto TLS1.2+", "implicit": "ssl"}[tls]
    rc.write_text(
        f"poll localhost via 127.0.0.1 service {port} protocol pop3 uidl\n"
        f"  user 'alice@example.org' there with password '{PASSWORD}' is root here\n"
        f"  {tls_options} sslcertck sslcertfile {cert} sslcommonname localhost\n"
        f"  {'keep' if keep else 'nokeep'}\n"
        f"  mda \"/bin/sh -c 'cat >> {tmp_path}/delivered'\"\n"
    )
    rc.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        # Own pid file: as root fetchmail would lock /var/run/fetchmail.pid, shared with any other run.
        FETCHMAIL, "-f", str(rc), "-i", str(tmp_path / "fetchids"), "--pidfile", str(tmp_path / "fetchmail.pid"),
        "--nosyslog", "-v",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(errors="replace")


def delivered(tmp_path: Path) -> bytes:
    path = tmp_path / "delivered"
    return path.read_bytes() if path.exists() else b""


async def test_fetchmail_over_stls_retrieves_and_deletes(pop3_strict, tmp_path):
    pop3_strict.deliver(b"From: x@example.net\r\nSubject: first\r\n\r\nbody one\r\n.dotted\r\n")
    pop3_strict.deliver(b"From: y@example.net\r\nSubject: second\r\n\r\nbody two\r\n")
    code, log = await fetchmail(tmp_path, pop3_strict.port, pop3_strict.cert, "stls", keep=False)
    assert code == 0, log
    assert "POP3> STLS" in log and "upgrade to TLS succeeded" in log
    mail = delivered(tmp_path)
    assert b"Subject: first" in mail and b"Subject: second" in mail
    assert b"\n.dotted" in mail and b"\n..dotted" not in mail  # byte-stuffing undone by the client
    assert pop3_strict.store.account("alice@example.org").messages("INBOX") == []


async def test_fetchmail_keep_with_uidl_fetches_only_new_mail(pop3_strict, tmp_path):
    pop3_strict.deliver(b"Subject: old\r\n\r\nold\r\n")
    code, log = await fetchmail(tmp_path, pop3_strict.tls_port, pop3_strict.cert, "implicit", keep=True)
    assert code == 0, log
    assert delivered(tmp_path).count(b"Subject: old") == 1
    pop3_strict.deliver(b"Subject: new\r\n\r\nnew\r\n")
    code, log = await fetchmail(tmp_path, pop3_strict.tls_port, pop3_strict.cert, "implicit", keep=True)
    assert code == 0, log
    mail = delivered(tmp_path)
    assert mail.count(b"Subject: old") == 1 and mail.count(b"Subject: new") == 1
    assert len(pop3_strict.store.account("alice@example.org").messages("INBOX")) == 2


async def test_fetchmail_wrong_password_fails_cleanly(pop3_strict, tmp_path):
    pop3_strict.directory.set_password("alice@example.org", "something else")
    code, log = await fetchmail(tmp_path, pop3_strict.tls_port, pop3_strict.cert, "implicit", keep=True)
    assert code == 3, log  # fetchmail: 3 = authentication failed
