"""`mailfleet quarantine list [--json] | show ID [--raw] | release ID... | delete ID...`: the held messages.

list, show and delete act on the quarantine's files (data_dir/quarantine; nothing delivers from there, so nothing
races them). release asks the running server through its control socket, whose queue writes the message into
its spool and delivers it at once; with no server running the command writes it into the spool itself, and it
is delivered when the server starts. A released message is delivered as if the scan had passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from appliance.config import Config, load_config
from appliance.quarantine.store import Entry, Quarantine, QuarantineError, verdict_reason
from appliance.queue import control
from appliance.queue.spool import Spool


def register(subparsers: argparse._SubParsersAction) -> None:
    """The actions and their arguments: ``_ACTIONS``, at the end of the module, below the functions it names."""
    group = subparsers.add_parser("quarantine", help="inspect, release and delete held messages")
    actions = group.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    for name, text, func, arguments in _ACTIONS:
        parser = actions.add_parser(name, help=text)
        for argument, options in arguments:
            parser.add_argument(argument, **options)
        parser.set_defaults(func=func)


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, check_host=False)


def _list(args: argparse.Namespace) -> int:
    entries = Quarantine(_config(args).quarantine_dir).list()
    if args.json:
        print(json.dumps([_row(entry) for entry in entries], indent=2))
        return 0
    whole = [entry for entry in entries if entry.damaged is None]
    if not entries:
        print("quarantine is empty")
    for entry in entries:
        if entry.damaged is not None:
            print(f"{entry.queue_id}  damaged: {entry.damaged}")
            continue
        arrived = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.arrival))
        print(f"{entry.queue_id}  {entry.size:>9}  {arrived}  <{entry.sender}>  {entry.reason}")
        print(f"    to {', '.join(entry.recipients)}")
    if whole:
        print(f"-- {len(whole)} message(s)")
    if len(whole) < len(entries):
        print(f"-- {len(entries) - len(whole)} damaged file(s): never released; `delete` removes them")
    return 0


def _row(entry: Entry) -> dict[str, Any]:
    return {"id": entry.queue_id, "arrival": entry.arrival, "size": entry.size, "from": entry.sender,
            "recipients": list(entry.recipients), "verdict": dict(entry.verdict),
            "reason": entry.reason if entry.damaged is None else None,
            "damaged": entry.damaged is not None, "damage": entry.damaged}


def _show(args: argparse.Namespace) -> int:
    try:
        held = Quarantine(_config(args).quarantine_dir).get(args.queue_id)
    except QuarantineError as exc:
        return _error(exc)
    if args.raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(held.data)
        return 0
    message = held.message
    print(f"Queue-ID: {message.queue_id}\nArrival: {time.ctime(message.arrival)}\nSize: {len(held.data)}")
    print(f"Verdict: {verdict_reason(held.verdict)}")
    print(f"Verdict-Detail: {json.dumps(held.verdict, sort_keys=True, default=str)}")
    print(f"Client: {message.client} (helo {message.helo})\nSender: <{message.mail_from}>")
    for r in message.recipients:
        print(f"Recipient: {r.address}" + (f" (given as {r.original})" if r.original != r.address else ""))
    # The header section as it arrived (RFC 5322 §2.1: up to the first empty line), folds and all.
    header, _, _ = held.data.partition(b"\r\n\r\n")
    print()
    print(header.decode("utf-8", "replace").replace("\r\n", "\n"))
    return 0


def _release(args: argparse.Namespace) -> int:
    config = _config(args)
    quarantine = Quarantine(config.quarantine_dir)
    failed = 0
    for queue_id in args.queue_ids:
        answer = control.request(config.data_dir / "control.sock", {"cmd": "release", "id": queue_id})
        if answer is None:
            failed += _release_offline(config, quarantine, queue_id)
        elif answer.get("ok"):
            print(f"released {queue_id}: queued for {answer.get('recipients', 0)} recipient(s)")
        else:
            failed += _error(answer.get("error"))
    return 1 if failed else 0


def _release_offline(config: Config, quarantine: Quarantine, queue_id: str) -> int:
    """No server running: the command writes the message into the spool, where the server finds it at start."""
    try:
        message = asyncio.run(control.release_into_spool(quarantine, queue_id, Spool(config.spool_dir)))
    except QuarantineError as exc:
        return _error(exc)
    print(f"released {queue_id} into the queue for {len(message.recipients)} recipient(s); no server is running: "
          "it is delivered when the server starts")
    return 0


def _delete(args: argparse.Namespace) -> int:
    quarantine = Quarantine(_config(args).quarantine_dir)
    failed = 0
    for queue_id in args.queue_ids:
        try:
            quarantine.delete(queue_id)
        except QuarantineError as exc:
            failed += _error(exc)
            continue
        print(f"deleted {queue_id}")
    return 1 if failed else 0


def _error(reason: object) -> int:
    print(f"mailfleet: {reason}", file=sys.stderr)
    return 1


Argument = tuple[str, dict[str, Any]]
_ID: Argument = ("queue_id", {"metavar": "ID"})
_IDS: Argument = ("queue_ids", {"nargs": "+", "metavar": "ID"})
_ACTIONS: tuple[tuple[str, str, Callable[[argparse.Namespace], int], tuple[Argument, ...]], ...] = (
    ("list", "one line per held message, with the verdict", _list,
     (("--json", {"action": "store_true", "help": "machine-readable output"}),)),
    ("show", "verdict, envelope and header section of a held message", _show,
     (_ID, ("--raw", {"action": "store_true", "help": "the whole message as it arrived, nothing else"}))),
    ("release", "deliver as if the scan had passed", _release, (_IDS,)),
    ("delete", "remove for good, without notice", _delete, (_IDS,)),
)
