"""`mailfleet ban list [--json] | add ADDRESS[/PREFIX] [--for DURATION] [--reason TEXT] | del ADDRESS[/PREFIX]`.

The command opens the host's ban store (data_dir/bans.sqlite) itself: the running service reads the same file at
every connection, so a ban added here refuses the address's next connection on every listener at once, and one
lifted lets it in again, with no signal and no restart. Sessions already open are not cut.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from appliance.auth.bans import Ban, BanError, BanStore, parse_network, span, store_path
from appliance.config import load_config, parse_duration


def register(subparsers: argparse._SubParsersAction) -> None:
    """The actions and their arguments: ``_ACTIONS``, at the end of the module, below the functions it names."""
    group = subparsers.add_parser("ban", help="list, add and lift bans of client addresses")
    actions = group.add_subparsers(dest="ban_command", required=True, metavar="ACTION")
    for name, text, func, arguments in _ACTIONS:
        parser = actions.add_parser(name, help=text)
        for argument, options in arguments:
            parser.add_argument(argument, **options)
        parser.set_defaults(func=func)


def _store(args: argparse.Namespace) -> BanStore:
    config = load_config(args.config, check_host=False)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return BanStore(store_path(config), config.auth, config.bans)


def _when(moment: float | None) -> str:
    return "until lifted" if moment is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        bans = store.in_force()
    finally:
        store.close()
    if args.json:
        print(json.dumps([ban.as_dict() for ban in bans], indent=2))
        return 0
    if not bans:
        print("no bans in force")
    for ban in bans:
        print(f"{ban.address}  {_when(ban.until)}  {ban.reason}  ({_origin(ban)})")
        print(f"    {ban.evidence}")
    if bans:
        print(f"-- {len(bans)} ban(s)")
    return 0


def _origin(ban: Ban) -> str:
    if ban.source == "admin":
        return "by hand"
    return "first ban" if ban.offence == 1 else f"ban {ban.offence} of this address"


def _add(args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration, "--for") if args.duration is not None else None
    reason = " ".join(args.reason.split())
    if not reason:
        return _error("--reason: give the reason in words (it is shown to the client and in `ban list`)")
    try:
        network = parse_network(args.address)
    except BanError as exc:
        return _error(exc)
    store = _store(args)
    try:
        ban = store.add(network, duration, reason)
    except BanError as exc:
        return _error(exc)
    finally:
        store.close()
    length = "until lifted" if duration is None else f"for {span(duration)}, until {_when(ban.until)}"
    print(f"banned {ban.address} {length}: {reason}")
    return 0


def _del(args: argparse.Namespace) -> int:
    try:
        network = parse_network(args.address)
    except BanError as exc:
        return _error(exc)
    store = _store(args)
    try:
        lifted = store.remove(network)
        covering = store.covering(network) if lifted is None else []
    finally:
        store.close()
    if lifted is not None:
        print(f"lifted the ban of {lifted.address} ({lifted.reason})")
        return 0
    if covering:
        names = ", ".join(ban.address for ban in covering)
        return _error(f"{args.address.strip()} has no ban of its own; it is inside the ban of {names} "
                      "(lift that one)")
    return _error(f"{args.address.strip()} is not banned")


def _error(reason: object) -> int:
    print(f"mailfleet: {reason}", file=sys.stderr)
    return 1


Argument = tuple[str, dict[str, Any]]
_ADDRESS: Argument = ("address", {"metavar": "ADDRESS[/PREFIX]"})
_ACTIONS: tuple[tuple[str, str, Callable[[argparse.Namespace], int], tuple[Argument, ...]], ...] = (
    ("list", "the bans in force: address, end, reason, evidence", _list,
     (("--json", {"action": "store_true", "help": "machine-readable output"}),)),
    ("add", "ban an address or network by hand", _add,
     (_ADDRESS,
      ("--for", {"dest": "duration", "metavar": "DURATION", "help": "e.g. 30m, 12h, 7d (default: until lifted)"}),
      ("--reason", {"default": "banned by the administrator", "help": "shown in the 421 and in `ban list`"}))),
    ("del", "lift the ban of an address or network (and forget its history)", _del, (_ADDRESS,)),
)
