"""`mailfleet egress list [--json] | suspend ADDRESS [--reason TEXT] | resume ADDRESS`: the sending addresses of an
outgoing gateway.

The command opens the host's egress state store (data_dir/egress.sqlite) itself: the running service looks at
the same file before each new connection, so a suspension made here takes the address out of use at once, and a
resumption puts it back, with no signal and no restart. An administrator's suspension is held until an
administrator resumes the address; the service's own come and go with the DNSBL rounds.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from appliance.config import Config, load_config
from appliance.config.model import EgressAddress
from appliance.egress.store import ADMIN, EgressStore, store_path


class _Refused(Exception):
    """A request about an address this host's pool does not have; str() is the line to show."""


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("egress", help="list, suspend and resume the outgoing gateway's sending addresses")
    actions = group.add_subparsers(dest="egress_command", required=True, metavar="ACTION")
    for name, text, func, arguments in _ACTIONS:
        parser = actions.add_parser(name, help=text)
        for argument, options in arguments:
            parser.add_argument(argument, **options)
        parser.set_defaults(func=func)


def _pool(config: Config) -> tuple[EgressAddress, ...]:
    gateway = config.outgoing_gateway
    if gateway is None or not gateway.egress:
        raise _Refused(f"{config.source}: this host has no egress pool (outgoing_gateway.egress is empty)")
    return gateway.egress


def _open(args: argparse.Namespace) -> tuple[tuple[EgressAddress, ...], EgressStore]:
    config = load_config(args.config, check_host=False)
    pool = _pool(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return pool, EgressStore(store_path(config))


def _member(pool: tuple[EgressAddress, ...], text: str) -> str:
    try:
        address = str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise _Refused(f"{text.strip()!r} is not an IP address") from None
    if address not in {e.address for e in pool}:
        raise _Refused(f"{address} is not in outgoing_gateway.egress (the pool: "
                       f"{', '.join(e.address for e in pool)})")
    return address


def _when(moment: float | None) -> str:
    return "-" if moment is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _list(args: argparse.Namespace) -> int:
    pool, store = _open(args)
    try:
        states = [(entry, store.state(entry.address)) for entry in pool]
    finally:
        store.close()
    if args.json:
        print(json.dumps([{**state.as_dict(), "helo": entry.helo} for entry, state in states], indent=2))
        return 0
    for entry, state in states:
        why = f"  {state.why}" if state.why else ""
        print(f"{entry.address}  helo={entry.helo or '(host name)'}  {state.state}  since {_when(state.since)}{why}")
        if state.evidence:
            print(f"    {state.evidence}")
    return 0


def _suspend(args: argparse.Namespace) -> int:
    reason = " ".join(args.reason.split())
    if not reason:
        raise _Refused("--reason: give the reason in words (it is shown in `egress list`)")
    address, changed = _change(args, lambda store, address: store.suspend(address, "admin", reason, ADMIN,
                                                                          time.time()))
    print(f"suspended {address} until resumed: {reason}" if changed
          else f"{address} was already suspended by the administrator")
    return 0


def _resume(args: argparse.Namespace) -> int:
    address, changed = _change(args, lambda store, address: store.resume(address, "resumed by the administrator",
                                                                         ADMIN, time.time()))
    print(f"resumed {address}" if changed else f"{address} was not suspended")
    return 0


def _change(args: argparse.Namespace, change: Callable[[EgressStore, str], object | None]) -> tuple[str, bool]:
    """(address, whether its state changed): ``change`` applied to the pool's address that ADDRESS names."""
    pool, store = _open(args)
    try:
        address = _member(pool, args.address)
        return address, change(store, address) is not None
    finally:
        store.close()


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _Refused as exc:
            print(f"mailfleet: {exc}", file=sys.stderr)
            return 2
    return run


Argument = tuple[str, dict[str, Any]]
_ADDRESS: Argument = ("address", {"metavar": "ADDRESS"})
_ACTIONS: tuple[tuple[str, str, Callable[[argparse.Namespace], int], tuple[Argument, ...]], ...] = (
    ("list", "the sending addresses: helo, state, since, why, evidence", _guarded(_list),
     (("--json", {"action": "store_true", "help": "machine-readable output"}),)),
    ("suspend", "take an address out of use until resumed", _guarded(_suspend),
     (_ADDRESS, ("--reason", {"default": "suspended by the administrator", "help": "shown in `egress list`"}))),
    ("resume", "put a suspended address back in use", _guarded(_resume), (_ADDRESS,)),
)
