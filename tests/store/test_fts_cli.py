"""`mailfleet fts rebuild` through the real console entry point, in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.store import MailStore
from appliance.store.fts import FILE_NAME, FtsIndex


def mailfleet(config: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(config), *argv],
                          capture_output=True, text=True, timeout=120)


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "mailfleet.yml"
    path.write_text(f"hostname: mx.example.org\ndata_dir: {tmp_path / 'data'}\nroles: [primary]\n"
                    f"primary:\n  domains: [example.org]\n{extra}")
    return path


def test_rebuild_indexes_one_mailbox_or_all(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = MailStore(tmp_path / "data" / "mail")
    store.deliver("alice@example.org", b"Subject: a\r\n\r\nalpha bravo\r\n")
    store.deliver("alice@example.org", b"Subject: b\r\n\r\ncharlie\r\n")
    store.deliver("bob@example.org", b"Subject: c\r\n\r\ndelta\r\n")
    store.close()

    result = mailfleet(config, "fts", "rebuild", "--user", "Alice@Example.org")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "alice@example.org: 2 message(s) indexed, 0 of them cut at imap.fts_max_bytes" \
                            " or left to the scan\n"
    alice = tmp_path / "data" / "mail" / "example.org" / "alice"
    assert FtsIndex(alice).stats()[0] == 2
    assert not (alice.parent / "bob" / FILE_NAME).exists()

    result = mailfleet(config, "fts", "rebuild", "--all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "alice@example.org: 2 message(s) indexed, 0 of them cut at imap.fts_max_bytes or left to the scan",
        "bob@example.org: 1 message(s) indexed, 0 of them cut at imap.fts_max_bytes or left to the scan"]
    assert len(FtsIndex(alice.parent / "bob").matching("delta", body_only=True)) == 1


@pytest.mark.parametrize(("argv", "extra", "reason"), [
    (["--user", "nobody@example.org"], "", "--user nobody@example.org: no mailbox on this host"),
    (["--user", "not-an-address"], "", "--user: not a mailbox address"),
    (["--all"], "imap:\n  full_text_search: false\n", "imap.full_text_search is false"),
])
def test_bad_requests_are_one_line_errors(tmp_path: Path, argv: list[str], extra: str, reason: str) -> None:
    result = mailfleet(_config(tmp_path, extra), "fts", "rebuild", *argv)
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()] and reason in result.stderr
    assert result.stderr.startswith("mailfleet: fts rebuild: ")


def test_user_and_all_are_required_and_exclusive(tmp_path: Path) -> None:
    for argv in ([], ["--user", "a@example.org", "--all"]):
        result = mailfleet(_config(tmp_path), "fts", "rebuild", *argv)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "error:" in result.stderr.splitlines()[-1]


def test_a_bad_config_value_names_its_key(tmp_path: Path) -> None:
    result = mailfleet(_config(tmp_path, "imap:\n  fts_max_bytes: 10\n"), "fts", "rebuild", "--all")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "imap.fts_max_bytes" in result.stderr and "at least" not in result.stdout
