"""`mailfleet hash-password`: an argon2id hash for primary.users[].password_hash, the password never in argv."""

from __future__ import annotations

import argon2
import yaml

from .command import assert_one_line_error, assert_usage_error, mailfleet


def test_the_hash_from_stdin_verifies_and_check_config_accepts_it(tmp_path) -> None:
    result = mailfleet("hash-password", "--password-stdin", input="s3cret pass\n")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("$argon2id$")
    assert argon2.PasswordHasher().verify(line, "s3cret pass")
    # What the administrator does next: paste it into the config, which then passes the check.
    config = tmp_path / "mailfleet.yml"
    config.write_text(yaml.safe_dump({
        "hostname": "mx.example.org", "data_dir": str(tmp_path / "data"), "roles": ["primary"],
        "primary": {"domains": ["example.org"], "users": [{"address": "a@example.org", "password_hash": line}]}}))
    checked = mailfleet("check-config", "--no-host-check", config)
    assert checked.returncode == 0, checked.stderr


def test_a_crlf_line_end_is_not_part_of_the_password() -> None:
    result = mailfleet("hash-password", "--password-stdin", input="pw\r\n")
    assert argon2.PasswordHasher().verify(result.stdout.strip(), "pw")


def test_each_hash_has_its_own_salt() -> None:
    first, second = (mailfleet("hash-password", "--password-stdin", input="same\n").stdout for _ in range(2))
    assert first != second


def test_an_empty_password_is_refused() -> None:
    assert_one_line_error(mailfleet("hash-password", "--password-stdin", input="\n"), 2, "empty password refused")


def test_asked_twice_and_refused_when_the_two_differ() -> None:
    """Without --password-stdin it prompts twice; with no terminal, getpass reads standard input."""
    result = mailfleet("hash-password", input="one\ntwo\n")
    assert result.returncode == 2 and result.stdout == ""
    assert "mailfleet: the two passwords differ" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    result = mailfleet("hash-password", input="same\nsame\n")
    assert result.returncode == 0, result.stderr
    assert argon2.PasswordHasher().verify(result.stdout.strip(), "same")


def test_the_password_is_not_an_argument() -> None:
    assert_usage_error(mailfleet("hash-password", "hunter2"), "unrecognized arguments: hunter2")
