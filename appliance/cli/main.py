"""The `mailfleet` command: one entry point, one sub-module per command group."""

from __future__ import annotations

import argparse
import logging
import sys

from appliance.cli import (
    ban_cmd,
    dkim_cmd,
    egress_cmd,
    fts_cmd,
    imports,
    quarantine_cmd,
    queue_cmd,
    serve,
    tls_reports_cmd,
    users,
    web_cmd,
)
from appliance.config import ConfigError, load_config
from appliance.sieve.engine import check_globals

DEFAULT_CONFIG = "/etc/mailfleet/mailfleet.yml"


def _check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    config = load_config(path, check_host=not args.no_host_check)
    check_globals(config.sieve)  # the parser is in sieve/, above config/: checked here and at start
    print(f"{path}: OK (roles: {', '.join(config.roles)})")
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    """Print an argon2id hash for the config's primary.users (the password never touches argv)."""
    import getpass

    from argon2 import PasswordHasher

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("mailfleet: the two passwords differ", file=sys.stderr)
            return 2
    if not password:
        print("mailfleet: empty password refused", file=sys.stderr)
        return 2
    print(PasswordHasher().hash(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailfleet", description="Mailfleet mail appliance")
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(sub)
    check = sub.add_parser("check-config", help="validate a config file (exit 2 with the reason when broken)")
    check.add_argument("file", nargs="?", help="file to check (default: --config)")
    check.add_argument("--no-host-check", action="store_true",
                       help="skip checking that listen/source addresses exist on this host")
    check.set_defaults(func=_check_config)
    hashpw = sub.add_parser("hash-password", help="print an argon2id hash for primary.users[].password_hash")
    hashpw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    hashpw.set_defaults(func=_hash_password)
    # Command groups that live beside their subject; each module has register(subparsers).
    for module in (queue_cmd, quarantine_cmd, ban_cmd, dkim_cmd, egress_cmd, users, imports, tls_reports_cmd,
                   fts_cmd, web_cmd):
        module.register(sub)
    _accept_config_everywhere(parser)
    return parser


def _accept_config_everywhere(parser: argparse.ArgumentParser) -> None:
    """`mailfleet serve --config F` as well as `mailfleet --config F serve`, at every level of subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if not any("--config" in a.option_strings for a in child._actions):
                    child.add_argument("--config", "-c", default=argparse.SUPPRESS,
                                       help=f"config file (default {DEFAULT_CONFIG})")
                _accept_config_everywhere(child)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"mailfleet: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        logging.getLogger("appliance").debug("OS error", exc_info=True)
        print(f"mailfleet: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
