"""`mailfleet import maildir|mbox`: move users from Dovecot/Postfix without losing flags or dates.

Runs beside a live server: the store is safe across processes, and every imported message is
delivered durably (fsync + commit) exactly like an SMTP delivery.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from appliance.store import MailStore, QuotaExceeded, StoreError
from appliance.store.importing import (
    ImportSummary,
    SourceError,
    SourceMessage,
    count_mbox_messages,
    import_messages,
    maildir_messages,
    mbox_messages,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import", help="import a Maildir or an mbox file into a user's mailbox")
    kinds = parser.add_subparsers(dest="import_kind", required=True, metavar="KIND")
    maildir = kinds.add_parser("maildir", help="a Maildir (Maildir++ or fs layout, Dovecot keywords kept)")
    maildir.add_argument("path", type=Path, help="the Maildir (the directory holding cur/ new/ tmp/)")
    maildir.add_argument("--user", required=True, help="the mailbox address to import into")
    maildir.set_defaults(func=run_import)
    mbox = kinds.add_parser("mbox", help="an mbox file (Status/X-Status flags and From_ dates kept)")
    mbox.add_argument("path", type=Path, help="the mbox file")
    mbox.add_argument("--user", required=True, help="the mailbox address to import into")
    mbox.add_argument("--folder", default="INBOX", help="target folder, created if missing (default INBOX)")
    mbox.set_defaults(func=run_import)


class _ProgressBar:
    """A one-line progress bar on a terminal; a line per 10% otherwise (logs, CI)."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = -1
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        if self.tty:
            filled = percent * 30 // 100
            rate = done / max(time.monotonic() - self.started, 1e-6)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} ({rate:.0f} msg/s)")
            if done == total:
                self.stream.write("\n")
            self.stream.flush()
        elif percent // 10 != self.last // 10:
            self.stream.write(f"import: {done}/{total} messages ({percent}%)\n")
        self.last = percent


def _store(args: argparse.Namespace) -> MailStore:
    from appliance.config import load_config

    config = load_config(args.config, check_host=False)
    return MailStore(Path(config.data_dir) / "mail")


def _check_user(args: argparse.Namespace) -> str | None:
    """Refuse an address the directory does not know (a typo would create a stray mailbox)."""
    from appliance.config import load_config

    try:
        from appliance.auth.directory import Directory
    except ImportError:
        return None
    config = load_config(args.config, check_host=False)
    if getattr(config, "primary", None) is None:
        return f"{args.config}: roles has no primary; this host stores no mailboxes"
    directory = Directory.from_config(config)
    try:
        if not directory.user_exists(args.user):
            return f"--user {args.user}: no such user in the directory (add it with `mailfleet user add`)"
    finally:
        directory.close()
    return None


def run_import(args: argparse.Namespace) -> int:
    problem = _check_user(args)
    if problem:
        print(f"mailfleet import: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.import_kind == "maildir":
            found = maildir_messages(args.path)
            messages: Iterable[SourceMessage] = found
            total = len(found)
        else:
            total = count_mbox_messages(args.path)
            first = next(iter(mbox_messages(args.path, args.folder)), None)  # fails early on a non-mbox
            messages = mbox_messages(args.path, args.folder) if first is not None else []
    except SourceError as exc:
        print(f"mailfleet import: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"mailfleet import: {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    store = _store(args)
    started = time.monotonic()
    summary = ImportSummary()
    try:
        summary = import_messages(store, args.user, messages, total, _ProgressBar())
    except QuotaExceeded as exc:
        print(f"\nmailfleet import: stopped: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except StoreError as exc:
        print(f"\nmailfleet import: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close()
    elapsed = time.monotonic() - started
    folders = ", ".join(f"{name} {count}" for name, count in sorted(summary.folders.items())) or "none"
    print(f"imported {summary.messages} message(s), {summary.bytes} bytes, into {args.user} "
          f"in {elapsed:.1f}s (folders: {folders})")
    for reason in summary.skipped:
        print(f"skipped: {reason}")
    return EXIT_OK if not summary.skipped else EXIT_FAILURE
