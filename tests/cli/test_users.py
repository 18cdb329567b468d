"""`mailfleet user|alias|domain` as an administrator runs them (argparse wiring, exit codes, messages)."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import argon2
import pytest

from appliance.auth.directory import Directory
from appliance.cli.users import register


@pytest.fixture
def config_file(tmp_path):
    carol_hash = argon2.PasswordHasher().hash("carol-pw")
    path = tmp_path / "mailfleet.yml"
    path.write_text(
        "hostname: mx.example.org\n"
        f"data_dir: {tmp_path / 'data'}\n"
        "roles: [primary]\n"
        "primary:\n"
        "  domains: [example.org]\n"
        "  users:\n"
        f"    - {{address: carol@example.org, password_hash: '{carol_hash}', quota: 0}}\n"
        "  aliases:\n"
        "    postmaster@example.org: [carol@example.org]\n"
    )
    return path


@pytest.fixture
def cli(config_file, monkeypatch, capsys):
    def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="mailfleet")
        parser.add_argument("--config", default=str(config_file))
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(list(argv))
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def directory_of(tmp_path) -> Directory:
    return Directory(tmp_path / "data" / "directory.sqlite")


def test_user_add_with_password_on_stdin_then_login(cli, tmp_path):
    code, out, _ = cli("user", "add", "Dave@Example.org", "--quota", "100M", "--password-stdin", stdin="d pw\n")
    assert (code, out) == (0, "user dave@example.org added\n")
    directory = directory_of(tmp_path)
    assert directory.verify_password("dave@example.org", "d pw") == "dave@example.org"
    assert directory.quota("dave@example.org") == 100 * 1024 * 1024
    assert cli("user", "quota", "dave@example.org", "2G")[1] == "quota of dave@example.org set to 2147483648 bytes\n"
    assert directory.quota("dave@example.org") == 2 * 1024**3
    assert cli("user", "quota", "dave@example.org", "0")[0] == 0
    assert directory.quota("dave@example.org") == 0
    code, out, _ = cli("user", "list")
    assert out.splitlines() == ["carol@example.org\tquota=unlimited\tconfig",
                                "dave@example.org\tquota=unlimited\tdirectory"]


def test_password_never_from_argv_and_not_from_a_pipe_without_the_flag(cli, capsys):
    with pytest.raises(SystemExit):
        cli("user", "add", "dave@example.org", "--password", "x")
    assert "unrecognized arguments: x" in capsys.readouterr().err
    code, _, err = cli("user", "add", "dave@example.org", stdin="x\n")
    assert code == 2
    assert err == "mailfleet: standard input is not a terminal: pass the password with --password-stdin\n"


def test_passwd_and_del(cli, tmp_path):
    cli("user", "add", "dave@example.org", "--password-stdin", stdin="old\n")
    assert cli("user", "passwd", "dave@example.org", "--password-stdin", stdin="new\r\n")[0] == 0
    assert directory_of(tmp_path).verify_password("dave@example.org", "new") == "dave@example.org"
    assert cli("user", "del", "dave@example.org")[0] == 0
    code, _, err = cli("user", "del", "dave@example.org")
    assert (code, err) == (1, "mailfleet: user dave@example.org: no such user\n")


def test_config_entries_are_read_only(cli):
    code, _, err = cli("user", "del", "carol@example.org")
    assert code == 2
    assert err == ("mailfleet: user carol@example.org: defined in the config file (primary.users); "
                   "remove it there instead\n")
    code, _, err = cli("alias", "del", "postmaster@example.org")
    assert code == 2 and "config file (primary.aliases)" in err
    code, _, err = cli("domain", "del", "example.org")
    assert code == 2 and "config file (primary.domains)" in err


def test_bad_input_is_one_line_and_exit_2(cli):
    for argv, message in [
        (("user", "add", "nobody", "--no-password"), "missing '@domain'"),
        (("user", "add", "x@elsewhere.example", "--no-password"), "not a local domain"),
        (("user", "add", "x@example.org", "--quota", "lots", "--no-password"), "--quota 'lots'"),
        (("domain", "add", "bad_domain"), "needs at least two labels"),
    ]:
        code, out, err = cli(*argv)
        assert code == 2, argv
        assert out == "" and err.count("\n") == 1 and message in err, err


def test_alias_and_catch_all_and_domain(cli, tmp_path):
    assert cli("domain", "add", "Example.NET")[0] == 0
    assert cli("domain", "list")[1] == "example.net\tdirectory\nexample.org\tconfig\n"
    assert cli("user", "add", "eve@example.net", "--no-password")[0] == 0
    assert cli("alias", "add", "team@example.net", "eve@example.net", "carol@example.org")[0] == 0
    assert cli("alias", "add", "@example.net", "eve@example.net")[0] == 0
    directory = directory_of(tmp_path)
    assert sorted(directory.resolve("team@example.net")) == ["carol@example.org", "eve@example.net"]
    assert directory.resolve("whoever@example.net") == ["eve@example.net"]
    listing = cli("alias", "list")[1].splitlines()
    assert "team@example.net\tcarol@example.org, eve@example.net\tdirectory" in listing
    assert "@example.net\teve@example.net\tdirectory" in listing
    code, _, err = cli("domain", "del", "example.net")
    assert code == 2 and "still has" in err


def test_broken_config_is_reported_in_one_line(cli, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("hostname: [\n")
    code, _, err = cli("--config", str(broken), "user", "list")
    assert code == 2 and err.startswith(f"mailfleet: {broken}: ") and err.count("\n") == 1


def test_mailfleet_command_reads_the_password_from_stdin(config_file, tmp_path):
    """The real `mailfleet` entry point in its own process, as an administrator's shell runs it."""
    def mailfleet(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(config_file), *argv],
                              input=stdin, capture_output=True, text=True, env={**os.environ}, timeout=60)

    result = mailfleet("user", "add", "zed@example.org", "--password-stdin", stdin="zed-pw\n")
    assert result.returncode == 0, result.stderr
    assert directory_of(tmp_path).verify_password("zed@example.org", "zed-pw") == "zed@example.org"
    result = mailfleet("user", "del", "carol@example.org")
    assert result.returncode == 2
    assert "defined in the config file (primary.users)" in result.stderr and "Traceback" not in result.stderr
    assert mailfleet("user", "list").stdout.splitlines()[-1].startswith("zed@example.org\t")
