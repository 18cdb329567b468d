"""`mailfleet tls-reports send [--day YYYY-MM-DD] [--force]`: send the TLS-RPT reports (RFC 8460) now.

With the server running, the command asks it through the control socket: the queue process holds the latest
counts and delivers the mailed reports at once. With none running, the command reads the counts itself and
commits the mailed reports to the spool, which delivers them at the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from appliance.config import Config, load_config
from appliance.queue import control
from appliance.queue.spool import Spool
from appliance.service.tls_reports import SEND_COMMAND, TLSReporting, parse_day
from appliance.tlspolicy.reports import utc_day

SEND_TIMEOUT = 600.0  # DNS lookups and the retried POSTs of every domain's report


def register(subparsers: argparse._SubParsersAction) -> None:
    reports = subparsers.add_parser("tls-reports", help="TLS-RPT (RFC 8460) aggregate reports").add_subparsers(
        dest="tls_reports_command", required=True, metavar="ACTION")
    send = reports.add_parser("send", help="send the reports now (default: every finished day not reported yet)")
    send.add_argument("--day", help="only this UTC day, YYYY-MM-DD")
    send.add_argument("--force", action="store_true", help="with --day: send again a day already reported")
    send.set_defaults(func=_send)


def _send(args: argparse.Namespace) -> int:
    config = load_config(args.config, check_host=False)
    if not config.tls_reports.enabled:
        print("mailfleet: tls_reports.enabled is false: this host records no TLS results to report", file=sys.stderr)
        return 2
    day = None
    if args.day is not None:
        try:
            day = parse_day(args.day, utc_day(time.time()))
        except ValueError as exc:
            print(f"mailfleet: {exc}", file=sys.stderr)
            return 2
    elif args.force:
        print("mailfleet: --force needs --day", file=sys.stderr)
        return 2
    answer = control.request(config.data_dir / "control.sock", {"cmd": SEND_COMMAND, "day": day,
                                                                "force": args.force}, timeout=SEND_TIMEOUT)
    if answer is None:
        lines = asyncio.run(_without_server(config, day, args.force))
    elif not answer.get("ok"):
        print(f"mailfleet: {answer.get('error', 'the server refused')}", file=sys.stderr)
        return 1
    else:
        lines = answer["lines"]
    for line in lines:
        print(line)
    if not lines:
        print("no report due")
    return 0


async def _without_server(config: Config, day: str | None, force: bool) -> list[str]:
    spool = Spool(config.spool_dir)
    reporting = TLSReporting(config, spool, enqueue=None)
    try:
        return await reporting.send_now(day, force)
    finally:
        reporting.store.close()
        spool.close()
