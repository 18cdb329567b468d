"""`mailfleet web token list [--json] | add NAME --scope SCOPE... [--secret-stdin] | del NAME`.

The API's bearer tokens (web/tokens.py). ``add`` prints the new secret once; with ``--secret-stdin`` it takes a
given secret instead and replaces a token of the same name (how the Ansible roles distribute the fleet token).
The running service reads the same file at every API call: a token works, or stops working, at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from appliance.config import load_config
from appliance.web.tokens import SCOPES, TokenError, TokenStore, store_path


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("web", help="the web console's API tokens")
    actions = group.add_subparsers(dest="web_command", required=True, metavar="ACTION")
    token = actions.add_parser("token", help="list, add and delete API tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION")
    listing = token.add_parser("list", help="the tokens, their scopes and last use")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    add = token.add_parser("add", help="make a token and print its secret (shown once)")
    add.add_argument("name")
    add.add_argument("--scope", action="append", default=[], metavar="SCOPE",
                     help=f"what it may do, repeatable: {', '.join(SCOPES)}")
    add.add_argument("--secret-stdin", action="store_true",
                     help="read the secret from stdin (at least 32 characters) and replace a token of this name")
    add.set_defaults(func=_add)
    delete = token.add_parser("del", help="delete a token: it stops working at once")
    delete.add_argument("name")
    delete.set_defaults(func=_del)


def _store(args: argparse.Namespace) -> TokenStore:
    config = load_config(args.config, check_host=False)
    return TokenStore(store_path(config.data_dir))


def _error(message: object) -> int:
    print(f"mailfleet web: {message}", file=sys.stderr)
    return 1


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        tokens = store.list()
    finally:
        store.close()
    if args.json:
        print(json.dumps([{"name": t.name, "scopes": sorted(t.scopes), "created": t.created,
                           "last_used": t.last_used} for t in tokens], indent=2))
        return 0
    if not tokens:
        print("no API tokens")
    for t in tokens:
        used = "never used" if t.last_used is None else time.strftime("last used %Y-%m-%d %H:%M UTC",
                                                                      time.gmtime(t.last_used))
        print(f"{t.name}\t{' '.join(sorted(t.scopes))}\t{used}")
    return 0


def _add(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if args.secret_stdin:
            secret = sys.stdin.readline().strip()
            store.put(args.name, args.scope, secret)
            print(f"token {args.name} set ({' '.join(sorted(args.scope))})")
        else:
            print(store.add(args.name, args.scope))
    except TokenError as exc:
        return _error(exc)
    finally:
        store.close()
    return 0


def _del(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.delete(args.name)
    except TokenError as exc:
        return _error(exc)
    finally:
        store.close()
    print(f"token {args.name} deleted")
    return 0
