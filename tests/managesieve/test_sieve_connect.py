"""ManageSieve with Debian's `sieve-connect` (Perl, Authen::SASL, IO::Socket::SSL) against `mailfleet serve`:
STARTTLS with certificate verification, then upload, activate, list, download, a refused upload, deactivate,
delete; all in one session (`--exec`), as a user's script would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.managesieve.conftest import ADDRESS, BAD, GOOD, PASSWORD, certificate, scripts_folder

pytestmark = pytest.mark.skipif(shutil.which("sieve-connect") is None, reason="make apt installs sieve-connect")


def sieve_connect(server, user: str, *args: str) -> subprocess.CompletedProcess:
    command = ["sieve-connect", "--server", ADDRESS, "--port", str(server.ports["managesieve"]), "--user", user,
               "--passwordfd", "0", "--authmech", "PLAIN", "--tlscafile", str(certificate(server)),
               "--tlshostname", server.config["hostname"], *args]
    return subprocess.run(command, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)


def test_a_session_of_sieve_connect(strict_server, user, tmp_path: Path) -> None:
    # the strict server: sieve-connect can log in only after STARTTLS, with the certificate verified
    good, bad, copy = tmp_path / "good.sieve", tmp_path / "bad.sieve", tmp_path / "copy.sieve"
    good.write_bytes(GOOD.encode())
    bad.write_bytes(BAD.encode())
    first = tmp_path / "first"
    first.write_text(f"put {good} filters\nactivate filters\nlist\nget filters {copy}\nput {bad} broken\nlist\n")
    done = sieve_connect(strict_server, user, "--exec", str(first))
    # the refused upload is the one problem, reported with the checker's line
    assert done.returncode == 1
    assert 'PUTSCRIPT(broken) failed: NO "line ' in done.stderr
    assert "saw 1 problems" in done.stderr
    assert [line for line in done.stdout.splitlines() if line] == ['"filters" ACTIVE', '"filters" ACTIVE']
    assert copy.read_bytes() == GOOD.encode()
    assert (scripts_folder(strict_server, user) / "active").read_text() == "filters"

    second = tmp_path / "second"
    second.write_text("deactivate\ndelete filters\nlist\n")
    done = sieve_connect(strict_server, user, "--exec", str(second))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    assert not (scripts_folder(strict_server, user) / "active").exists()
