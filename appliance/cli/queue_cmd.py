"""`mailfleet queue list | show ID | flush [ID] | delete ID | bounce ID` on the live spool.

list and show read the spool files directly (they are the truth, whether or not the server runs); flush, delete
and bounce ask the running server through its control socket so that they never race a delivery in flight.
With no server running, delete and bounce act on the files themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from email.parser import BytesHeaderParser
from typing import Any

from appliance.config import Config, load_config
from appliance.message.model import PENDING, QueuedMessage, SpoolCorrupt
from appliance.queue import control
from appliance.queue.runner import return_to_sender
from appliance.queue.spool import Spool


def register(subparsers: argparse._SubParsersAction) -> None:
    queue = subparsers.add_parser("queue", help="inspect and act on the mail queue").add_subparsers(
        dest="queue_command", required=True, metavar="ACTION")
    listing = queue.add_parser("list", help="one line per queued message")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)
    for name, text, func, optional in (("show", "envelope, recipient states and headers of a message", _show, False),
                                       ("flush", "deliver now (one message, or all)", _flush, True),
                                       ("delete", "remove a message without notice", _delete, False),
                                       ("bounce", "return a message to its sender now", _bounce, False)):
        parser = queue.add_parser(name, help=text)
        parser.add_argument("queue_id", nargs="?" if optional else None, metavar="ID")
        parser.set_defaults(func=func)


def _spool(args: argparse.Namespace) -> Spool:
    return Spool(load_config(args.config, check_host=False).spool_dir)


def _list(args: argparse.Namespace) -> int:
    spool = _spool(args)
    rows = []
    in_queue = []  # damaged files still in msg/: the service sets them aside (and tells their senders) at start
    for item in spool.scan():
        if isinstance(item, SpoolCorrupt):
            in_queue.append(item)
        else:
            rows.append(_row(item))
    set_aside = spool.damaged()
    if args.json:
        print(json.dumps(rows + [_damaged_row(d, "queue") for d in in_queue]
                         + [_damaged_row(d, "set aside") for d in set_aside], indent=2))
        return 0
    if not rows:
        print("queue is empty")
    now = time.time()
    for row in rows:
        arrived = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["arrival"]))
        print(f"{row['id']}  {row['size']:>9}  {arrived}  <{row['from']}>")
        for r in row["recipients"]:
            when = ""
            if r["status"] == PENDING and r["next_attempt"]:
                when = f" next in {max(0, int(r['next_attempt'] - now))}s"
            last = f"  ({r['last']})" if r["last"] else ""
            print(f"    {r['address']}  {r['status']} after {r['attempts']} attempt(s){when}{last}")
    if rows:
        print(f"-- {len(rows)} message(s)")
    for damaged in in_queue:
        print(f"{damaged.queue_id}  damaged: {damaged}; set aside when the service starts")
    if set_aside:
        print(f"-- {len(set_aside)} damaged message(s) set aside in {spool.corrupt_dir}")
    return 0


def _row(message: QueuedMessage) -> dict[str, Any]:
    return {
        "id": message.queue_id, "arrival": message.arrival, "size": message.size, "from": message.mail_from,
        "recipients": [{"address": r.address, "status": r.status, "attempts": r.attempts,
                        "next_attempt": r.next_attempt, "last": r.last_text} for r in message.recipients],
        "pending": len(message.pending()), "damaged": False,
    }


def _damaged_row(damaged: SpoolCorrupt, where: str) -> dict[str, Any]:
    """A damaged file, with what its envelope still tells; ``where``: "queue" (msg/) or "set aside" (corrupt/).
    Nothing of it is pending: it is never delivered."""
    message = damaged.message
    row = _row(message) if message is not None else {"id": damaged.queue_id, "arrival": None, "size": None,
                                                     "from": None, "recipients": []}
    return {**row, "pending": 0, "damaged": True, "where": where, "reason": str(damaged)}


def _show(args: argparse.Namespace) -> int:
    spool = _spool(args)
    try:
        message = spool.load(args.queue_id)
    except FileNotFoundError:
        print(f"mailfleet: no message {args.queue_id} in the queue", file=sys.stderr)
        return 1
    except SpoolCorrupt as exc:
        print(f"mailfleet: {exc}", file=sys.stderr)
        return 1
    print(f"Queue-ID: {message.queue_id}\nArrival: {time.ctime(message.arrival)}\nSize: {message.size}")
    print(f"Client: {message.client} (helo {message.helo})\nSender: <{message.mail_from}>")
    for r in message.recipients:
        print(f"Recipient: {r.address} (given as {r.original}) {r.status}, {r.attempts} attempt(s) {r.last_text}")
    headers = BytesHeaderParser().parsebytes(message.read_data())
    print()
    for key, value in headers.items():
        print(f"{key}: {value}")
    return 0


def _ask(config: Config, payload: dict) -> dict | None:
    return control.request(config.data_dir / "control.sock", payload)


def _answer(answer: dict, success: str) -> int:
    if answer.get("ok"):
        print(success)
        return 0
    print(f"mailfleet: {answer.get('error')}", file=sys.stderr)
    return 1


def _flush(args: argparse.Namespace) -> int:
    answer = _ask(load_config(args.config, check_host=False), {"cmd": "flush", "id": args.queue_id})
    if answer is None:
        print("mailfleet: no server is running; queued mail is tried when it starts", file=sys.stderr)
        return 1
    return _answer(answer, f"flushed {answer.get('count', 0)} message(s)")


def _delete(args: argparse.Namespace) -> int:
    config = load_config(args.config, check_host=False)
    answer = _ask(config, {"cmd": "delete", "id": args.queue_id})
    if answer is not None:
        return _answer(answer, f"deleted {args.queue_id}")
    spool = Spool(config.spool_dir)
    if args.queue_id not in spool.ids():
        print(f"mailfleet: no message {args.queue_id} in the queue", file=sys.stderr)
        return 1
    spool.remove_now(args.queue_id)
    print(f"deleted {args.queue_id}")
    return 0


def _bounce(args: argparse.Namespace) -> int:
    config = load_config(args.config, check_host=False)
    answer = _ask(config, {"cmd": "bounce", "id": args.queue_id})
    if answer is not None:
        return _answer(answer, f"bounced {args.queue_id}")
    spool = Spool(config.spool_dir)
    try:
        message = spool.load(args.queue_id)
    except (FileNotFoundError, SpoolCorrupt):
        print(f"mailfleet: no message {args.queue_id} in the queue", file=sys.stderr)
        return 1
    spool.record(message, return_to_sender(message))
    print(f"{args.queue_id}: marked failed; the bounce is sent when the server starts")
    return 0
