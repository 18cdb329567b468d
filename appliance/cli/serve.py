"""`mailfleet serve` and the hidden `mailfleet smtp-worker`: commands over appliance.service."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

# The service's modules are imported when a service command runs: the other commands start without them.


def _serve(args: argparse.Namespace) -> int:
    from appliance.service.run import serve
    from appliance.service.tuning import tune_service_process

    tune_service_process()
    return asyncio.run(serve(Path(args.config)))


def _smtp_worker(args: argparse.Namespace) -> int:
    from appliance.service.run import run_acceptor
    from appliance.service.tuning import tune_service_process

    fds: dict[str, list[int]] = {}
    for item in args.fds.split(","):
        name, _, fd = item.partition(":")
        fds.setdefault(name, []).append(int(fd))
    tune_service_process()
    return asyncio.run(run_acceptor(Path(args.config), Path(args.snapshot), args.index, fds, Path(args.notify),
                                    args.workers))


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("serve", help="run every service of this host's roles").set_defaults(func=_serve)
    worker = sub.add_parser("smtp-worker", help=argparse.SUPPRESS)  # started by serve, never by hand
    worker.add_argument("--snapshot", required=True, help="the config text serve validated")
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--workers", type=int, required=True)
    worker.add_argument("--fds", required=True, help="name:fd,... listening sockets inherited from serve")
    worker.add_argument("--notify", required=True)
    worker.set_defaults(func=_smtp_worker)
