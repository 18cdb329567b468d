"""`mailfleet user|alias|domain ...`: manage the SQLite directory while the server runs.

user add|passwd|quota|del|list, alias add|del|list (``@domain`` = catch-all), domain add|del|list.

Passwords are read from the terminal (getpass, asked twice) or from stdin with ``--password-stdin``,
never from argv, where any local user could read them in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Callable

from appliance.auth.directory import Directory, DirectoryError, NotFoundError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

_QUOTA_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_QUOTA_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class UsageError(Exception):
    """Bad input on the command line; printed as one line, exit code 2."""


def parse_quota(text: str) -> int:
    """Bytes from "0", "500000", "100M", "2GiB" (binary units)."""
    match = _QUOTA_RE.match(text)
    if not match:
        raise UsageError(f"--quota {text!r}: expected bytes or a number with K, M, G or T (like 2G)")
    return int(match.group(1)) * _QUOTA_UNITS[match.group(2).upper()]


def _open_directory(args: argparse.Namespace) -> Directory:
    from appliance.config import load_config

    config = load_config(args.config, check_host=False)
    if config.primary is None:
        raise UsageError(f"{args.config}: roles has no primary; this host keeps no user directory")
    return Directory.from_config(config)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
        if not password:
            raise UsageError("--password-stdin: no password on standard input (empty line)")
        return password
    if not sys.stdin.isatty():
        raise UsageError("standard input is not a terminal: pass the password with --password-stdin")
    first = getpass.getpass(f"Password for {args.address}: ")
    if not first:
        raise UsageError("empty password refused")
    if getpass.getpass("Repeat password: ") != first:
        raise UsageError("the two passwords differ; nothing changed")
    return first


def _run(handler: Callable[[argparse.Namespace, Directory], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a handler: open the directory, turn refusals into one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from appliance.config import ConfigError

        try:
            directory = _open_directory(args)
        except (ConfigError, UsageError, DirectoryError) as exc:
            print(f"mailfleet: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            return handler(args, directory)
        except NotFoundError as exc:
            print(f"mailfleet: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except (UsageError, DirectoryError) as exc:
            print(f"mailfleet: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("mailfleet: interrupted; nothing changed", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            directory.close()

    return run


# -- handlers ----------------------------------------------------------------------------------------


def _user_add(args: argparse.Namespace, directory: Directory) -> int:
    quota = parse_quota(args.quota)
    password = None if args.no_password else _read_password(args)
    address = directory.add_user(args.address, password, quota=quota)
    if args.admin:
        directory.set_admin(address, True)
    print(f"user {address} added" + (" (mail only, cannot log in)" if password is None else "")
          + (", administrator of the web console" if args.admin else ""))
    return EXIT_OK


def _user_admin(args: argparse.Namespace, directory: Directory) -> int:
    on = args.state == "on"
    directory.set_admin(args.address, on)
    print(f"{args.address.lower()} {'is now' if on else 'is no longer'} an administrator of the web console")
    return EXIT_OK


def _user_passwd(args: argparse.Namespace, directory: Directory) -> int:
    if not directory.user_exists(args.address):
        raise NotFoundError(f"user {args.address}: no such user")
    directory.set_password(args.address, _read_password(args))
    print(f"password of {args.address.lower()} changed")
    return EXIT_OK


def _user_del(args: argparse.Namespace, directory: Directory) -> int:
    directory.delete_user(args.address)
    print(f"user {args.address.lower()} deleted (stored mail is kept)")
    return EXIT_OK


def _user_quota(args: argparse.Namespace, directory: Directory) -> int:
    quota = parse_quota(args.quota)
    directory.set_quota(args.address, quota)
    print(f"quota of {args.address.lower()} set to {'unlimited' if quota == 0 else f'{quota} bytes'}")
    return EXIT_OK


def _user_list(args: argparse.Namespace, directory: Directory) -> int:
    admins = set(directory.list_admins())
    for user in directory.list_users():
        quota = "unlimited" if user.quota == 0 else str(user.quota)
        login = "" if user.can_login else "\tno-login"
        admin = "\tadmin" if user.address in admins else ""
        print(f"{user.address}\tquota={quota}\t{user.source}{login}{admin}")
    return EXIT_OK


def _alias_add(args: argparse.Namespace, directory: Directory) -> int:
    address = directory.add_alias(args.alias, args.targets)
    print(f"alias {address} -> {', '.join(t.lower() for t in args.targets)}")
    return EXIT_OK


def _alias_del(args: argparse.Namespace, directory: Directory) -> int:
    directory.delete_alias(args.alias, args.targets)
    print(f"alias {args.alias.lower()}: " + (", ".join(args.targets) if args.targets else "deleted"))
    return EXIT_OK


def _alias_list(args: argparse.Namespace, directory: Directory) -> int:
    for alias in directory.list_aliases():
        print(f"{alias.address}\t{', '.join(alias.targets)}\t{alias.source}")
    return EXIT_OK


def _domain_add(args: argparse.Namespace, directory: Directory) -> int:
    print(f"domain {directory.add_domain(args.domain)} added")
    return EXIT_OK


def _domain_del(args: argparse.Namespace, directory: Directory) -> int:
    directory.delete_domain(args.domain)
    print(f"domain {args.domain.lower()} deleted")
    return EXIT_OK


def _domain_list(args: argparse.Namespace, directory: Directory) -> int:
    for domain in directory.list_domains():
        print(f"{domain.name}\t{domain.source}")
    return EXIT_OK


# -- argparse wiring ---------------------------------------------------------------------------------


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input instead of the terminal")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``user``, ``alias`` and ``domain`` command groups to the main parser."""
    user = subparsers.add_parser("user", help="manage mailbox users").add_subparsers(dest="user_command",
                                                                                   required=True)
    add = user.add_parser("add", help="create a user (password asked on the terminal)")
    add.add_argument("address")
    add.add_argument("--quota", default="0", help="mailbox quota: bytes or 500M, 2G ... (0 = unlimited)")
    _password_option(add)
    add.add_argument("--no-password", action="store_true", help="mail-only user that cannot log in")
    add.add_argument("--admin", action="store_true", help="the user may log in to the web console as administrator")
    add.set_defaults(func=_run(_user_add))
    admin = user.add_parser("admin", help="make a user an administrator of the web console (on), or not (off)")
    admin.add_argument("address")
    admin.add_argument("state", choices=("on", "off"))
    admin.set_defaults(func=_run(_user_admin))
    passwd = user.add_parser("passwd", help="set a user's password")
    passwd.add_argument("address")
    _password_option(passwd)
    passwd.set_defaults(func=_run(_user_passwd))
    delete = user.add_parser("del", help="delete a user (stored mail is kept)")
    delete.add_argument("address")
    delete.set_defaults(func=_run(_user_del))
    quota = user.add_parser("quota", help="set a user's mailbox quota")
    quota.add_argument("address")
    quota.add_argument("quota", help="bytes or 500M, 2G ... (0 = unlimited)")
    quota.set_defaults(func=_run(_user_quota))
    user.add_parser("list", help="list users (config and directory)").set_defaults(func=_run(_user_list))

    alias = subparsers.add_parser("alias", help="manage aliases and catch-alls").add_subparsers(
        dest="alias_command", required=True)
    add = alias.add_parser("add", help="add targets to an alias; '@domain' sets the domain's catch-all")
    add.add_argument("alias")
    add.add_argument("targets", nargs="+", metavar="target")
    add.set_defaults(func=_run(_alias_add))
    delete = alias.add_parser("del", help="delete an alias, or only the given targets")
    delete.add_argument("alias")
    delete.add_argument("targets", nargs="*", metavar="target")
    delete.set_defaults(func=_run(_alias_del))
    alias.add_parser("list", help="list aliases and catch-alls").set_defaults(func=_run(_alias_list))

    domain = subparsers.add_parser("domain", help="manage local domains").add_subparsers(
        dest="domain_command", required=True)
    for name, handler, text in (("add", _domain_add, "add a local domain"),
                                ("del", _domain_del, "delete an empty local domain")):
        sub = domain.add_parser(name, help=text)
        sub.add_argument("domain")
        sub.set_defaults(func=_run(handler))
    domain.add_parser("list", help="list local domains").set_defaults(func=_run(_domain_list))
