"""The command line itself: --config before or after the command, and bad arguments refused in a clear line
with exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .command import assert_one_line_error, assert_usage_error, mailfleet

PRIMARY = {
    "hostname": "mx1.example.net",
    "roles": ["primary"],
    "listen": {"smtp": ["127.0.0.1:2525"]},
    "primary": {"domains": ["example.org"], "users": [{"address": "alice@example.org"}]},
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailfleet.yml"
    path.write_text(yaml.safe_dump({**PRIMARY, "data_dir": str(tmp_path / "data")}))
    return path


@pytest.mark.parametrize(("argv", "expected"), [
    (["--config", "{path}", "check-config"], "OK (roles: primary)"),
    (["check-config", "--config", "{path}"], "OK (roles: primary)"),
    (["-c", "{path}", "queue", "list"], "queue is empty"),
    (["queue", "list", "--config", "{path}"], "queue is empty"),
    (["queue", "list", "-c", "{path}", "--json"], "[]"),
    (["user", "list", "--config", "{path}"], "alice@example.org\tquota=unlimited\tconfig"),
    (["--config", "{path}", "domain", "list"], "example.org\tconfig"),
])
def test_config_option_before_or_after_the_command(config: Path, argv: list[str], expected: str) -> None:
    result = mailfleet(*(a.format(path=config) for a in argv))
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout.splitlines()[-1]


def test_import_takes_config_after_its_kind(config: Path, tmp_path: Path) -> None:
    mbox = tmp_path / "one.mbox"
    mbox.write_bytes(b"From a@example.net Tue Jul 23 19:39:23 2002\nSubject: one\n\nbody\n")
    result = mailfleet("import", "mbox", mbox, "--user", "alice@example.org", "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported 1 message(s)")


@pytest.mark.parametrize(("argv", "reason"), [
    ([], "the following arguments are required: COMMAND"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["queue"], "the following arguments are required: ACTION"),
    (["queue", "show"], "the following arguments are required: ID"),
    (["queue", "delete"], "the following arguments are required: ID"),
    (["queue", "list", "--bogus"], "unrecognized arguments: --bogus"),
    (["queue", "list", "extra"], "unrecognized arguments: extra"),
    (["import", "tarball", "x"], "invalid choice: 'tarball'"),
    (["import", "mbox"], "the following arguments are required: path, --user"),
    (["user", "add"], "the following arguments are required: address"),
    (["user", "quota", "a@example.org"], "the following arguments are required: quota"),
    (["alias", "add", "team@example.org"], "the following arguments are required: target"),
    (["check-config", "--config"], "argument --config/-c: expected one argument"),
    (["smtp-worker"], "the following arguments are required: --snapshot"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_give_usage_and_one_error_line(argv: list[str], reason: str) -> None:
    assert_usage_error(mailfleet(*argv), reason)


@pytest.mark.parametrize("command", [["queue", "list"], ["user", "list"], ["check-config"], ["serve"],
                                     ["import", "mbox", "/dev/null", "--user", "alice@example.org"]])
def test_a_missing_config_file_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    absent = tmp_path / "absent.yml"
    assert_one_line_error(mailfleet(*command, config=absent), 2, f"{absent}: file: does not exist")


def test_a_directory_as_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(mailfleet("queue", "list", config=tmp_path), 2, f"{tmp_path}: file: cannot be read")


def test_commands_of_a_role_this_host_lacks_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yml"
    path.write_text(yaml.safe_dump({"hostname": "gw.example.net", "data_dir": str(tmp_path / "data"),
                                    "roles": ["outgoing_gateway"]}))
    assert_one_line_error(mailfleet("user", "list", config=path), 2, "roles has no primary")
    assert_one_line_error(mailfleet("import", "mbox", "/dev/null", "--user", "a@example.org", config=path), 2,
                          "roles has no primary")
    assert mailfleet("queue", "list", config=path).stdout == "queue is empty\n"  # every role has a queue
