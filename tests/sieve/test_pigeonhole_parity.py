"""Parity with Dovecot's Pigeonhole: every script of tests/sieve/corpus on every message there, our actions
against those ``sieve-test`` (Debian's dovecot-sieve) prints for the same envelope."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.sieve import parse
from appliance.sieve.interpreter import Environment, FileInto, Redirect, Reject, Vacation, run_sequence
from appliance.sieve.mail import MailView
from appliance.sieve.vacation import refusal

CORPUS = Path(__file__).parent / "corpus"
SCRIPTS = sorted(CORPUS.glob("*.sieve"))
MESSAGES = sorted(CORPUS.glob("*.eml"))
USER = "bob+work@home.test"
SIEVE_TEST = shutil.which("sieve-test")

pytestmark = pytest.mark.skipif(SIEVE_TEST is None, reason="sieve-test (apt-get install dovecot-sieve) missing")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A directory sieve-test can write its compiled scripts to: it runs as an unprivileged mail user."""
    path = Path(tempfile.mkdtemp(prefix="sieve-parity-"))
    path.chmod(0o777)
    if os.getuid() == 0:  # Dovecot refuses mail access as root: it drops to nobody
        settings = "mail_uid = nobody\nmail_gid = nogroup\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n"
    else:
        settings = f"mail_uid = {os.getuid()}\nmail_gid = {os.getgid()}\n"
    (path / "dovecot.conf").write_text(settings + f"mail_location = maildir:{path}/mail\n")
    for source in [*SCRIPTS, *MESSAGES]:
        shutil.copy(source, path / source.name)
        (path / source.name).chmod(0o644)
    yield path
    shutil.rmtree(path)


def sieve_test(workdir: Path, script: Path, message: Path, sender: str, *options: str) -> str:
    done = subprocess.run([SIEVE_TEST, "-c", str(workdir / "dovecot.conf"), *options, "-f", sender, "-a", USER,
                           "-r", USER, str(workdir / script.name), str(workdir / message.name)], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "TZ": "UTC"}, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def pigeonhole(workdir: Path, script: Path, message: Path, sender: str) -> set[tuple]:
    """The actions sieve-test lists; a vacation only when its execution (-e) would send the reply (the checks of
    RFC 5230 §4.5-4.6 run only then)."""
    output = sieve_test(workdir, script, message, sender)
    actions: set[tuple] = set()
    current: list | None = None
    for line in output.splitlines():
        found = re.match(r"\s*\* (.*)$", line)
        if found:
            text = found.group(1)
            if current is not None:
                actions.add(tuple(current[:2]) + (frozenset(current[2]),))
                current = None
            if text.startswith("store message in folder: "):
                current = ["store", text.split(": ", 1)[1], []]
            elif text.startswith("redirect message to: "):
                actions.add(("redirect", text.split(": ", 1)[1].strip("<>")))
            elif text.startswith("send vacation message"):
                actions.add(("vacation",))
            elif text.startswith("reject message"):
                actions.add(("reject",))
            continue
        flags = re.match(r"\s*\+ add IMAP flags: (.*)$", line)
        if flags and current is not None:
            current[2] = [f.lower() for f in flags.group(1).split()]
    if current is not None:
        actions.add(tuple(current[:2]) + (frozenset(current[2]),))
    if ("vacation",) in actions and "sent vacation response" not in sieve_test(workdir, script, message, sender,
                                                                                "-e"):
        actions.discard(("vacation",))
    return actions


def ours(script: Path, message: Path, sender: str) -> set[tuple]:
    view = MailView(message.read_bytes(), sender, USER, USER)
    env = Environment(view, datetime.now(UTC), max_redirects=4, vacation_days=(1, 30))
    actions: set[tuple] = set()
    for action in run_sequence([parse(script.read_text())], env).final():
        if isinstance(action, FileInto):
            actions.add(("store", action.folder, frozenset(f.lower() for f in action.flags)))
        elif isinstance(action, Redirect):
            actions.add(("redirect", action.address))
        elif isinstance(action, Reject):
            actions.add(("reject",))
        elif isinstance(action, Vacation) and refusal(action, view, USER) is None:
            actions.add(("vacation",))
    return actions


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_same_actions_as_pigeonhole(workdir: Path, script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for message in MESSAGES:
        sender = re.search(rb"Return-Path: <([^>]*)>", message.read_bytes()).group(1).decode()  # type: ignore[union-attr]
        assert ours(script, message, sender) == pigeonhole(workdir, script, message, sender), message.name


def test_the_corpus_covers_the_extensions() -> None:
    used = set()
    for script in SCRIPTS:
        used |= parse(script.read_text()).requires
    assert {"fileinto", "imap4flags", "copy", "reject", "vacation", "body", "variables", "relational",
            "subaddress", "date", "envelope", "mailbox"} <= used
