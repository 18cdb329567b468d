"""`mailfleet ...` as an administrator's shell runs it: its own process, no terminal, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MAILFLEET = [sys.executable, "-m", "appliance.cli.main"]


def mailfleet(*argv: str | Path, config: Path | None = None, input: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the command; `config` goes before the command as `--config F`.

    A session of its own leaves the child without a controlling terminal, so that a password prompt reads
    standard input (and a test never hangs on /dev/tty).
    """
    prefix = ["--config", str(config)] if config is not None else []
    return subprocess.run([*MAILFLEET, *prefix, *map(str, argv)], input=input, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The refusal a user sees: exit `code`, nothing on stdout, one line on stderr holding `words`."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """A bad command line: exit 2, no traceback, argparse's usage and one `error:` line that says why."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert lines[0].startswith("usage: mailfleet"), result.stderr
    errors = [line for line in lines if ": error: " in line]
    assert errors == [lines[-1]], result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]
