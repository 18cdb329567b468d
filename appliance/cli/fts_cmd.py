"""`mailfleet fts rebuild`: remake the full-text search index (fts.sqlite) of one mailbox or of all of them.

The IMAP server keeps the index complete by itself (it indexes what is missing before it answers); a rebuild
is for an index an operator distrusts, or to index every mailbox ahead of the first searches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from appliance.config import load_config
from appliance.store import MailStore, canonical_address
from appliance.store.errors import InvalidAddress
from appliance.store.fts import FtsIndex


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fts", help="the full-text search index of the mailboxes (IMAP SEARCH BODY)")
    commands = parser.add_subparsers(dest="fts_command", required=True, metavar="COMMAND")
    rebuild = commands.add_parser("rebuild", help="index a mailbox's messages again, from their files")
    which = rebuild.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", help="the mailbox address")
    which.add_argument("--all", action="store_true", help="every mailbox of this host")
    rebuild.set_defaults(func=run_rebuild)


def _fail(reason: str) -> int:
    print(f"mailfleet: fts rebuild: {reason}", file=sys.stderr)
    return 2


def _mailboxes(root: Path) -> Iterator[str]:
    """Addresses of the mailboxes under mail/ (<domain>/<localpart>/ holding a mailbox index)."""
    if not root.is_dir():
        return
    for index in sorted(root.glob("*/*/mailfleet.sqlite")):
        yield f"{index.parent.name}@{index.parent.parent.name}"


def run_rebuild(args: argparse.Namespace) -> int:
    config = load_config(args.config, check_host=False)
    if config.primary is None:
        return _fail(f"{args.config}: roles has no primary; this host stores no mailboxes")
    if not config.imap.full_text_search:
        return _fail(f"{args.config}: imap.full_text_search is false; the IMAP server searches without an index")
    store = MailStore(config.mail_dir)
    try:
        if args.all:
            addresses = list(_mailboxes(config.mail_dir))
        else:
            try:
                address = canonical_address(args.user)
            except InvalidAddress as exc:
                return _fail(f"--user: {exc}")
            if not (store.account_path(address) / "mailfleet.sqlite").exists():
                return _fail(f"--user {address}: no mailbox on this host")
            addresses = [address]
        for address in addresses:
            account = store.account(address)
            index = FtsIndex(account.path, config.imap.fts_max_bytes)
            try:
                count = index.rebuild(account)
                _, cut = index.stats()
            finally:
                index.close()
            print(f"{address}: {count} message(s) indexed, {int(cut)} of them cut at imap.fts_max_bytes or "
                  "left to the scan")
    finally:
        store.close()
    if args.all and not addresses:
        print("no mailboxes on this host")
    return 0
