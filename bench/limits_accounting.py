#!/usr/bin/env python3
"""What the per-client limits cost per connection: the CONNECT check and the release at the end, as an
acceptor runs them, with the count table private (smtp.workers 0) or shared by 2 and 8 processes.

Each round is one connection from one of `--clients` addresses spread over /24 networks: the check counts the
connection for the address and its network, holds a session for both, and the end releases them; MAIL and RCPT
are one count each. Nothing is synced; the table file lives in a temporary directory.

    .venv/bin/python bench/limits_accounting.py [--rounds 200000] [--clients 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.abuse.counts import CountTable, slots_for
from appliance.abuse.limits import ClientLimits, SessionHolds
from appliance.config.model import Config, LimitsConfig, LimitSet
from appliance.pipeline.stages import MailFrom


@dataclass
class Client:
    ip: str
    peer: tuple[str, int]
    host_name: str | None = None
    login: str | None = None
    verdicts: dict[str, object] = field(default_factory=dict)


# Every limit on but none reached: the path of a client within its limits, the common one.
HIGH = LimitSet(10**6, 10**9, 10**9, 10**9, 10**9)


def checks_on(table: CountTable, exempt: bool) -> ClientLimits:
    limits = LimitsConfig(client=HIGH, network=HIGH) if exempt else LimitsConfig(exempt=(), client=HIGH,
                                                                               network=HIGH)
    return ClientLimits(Config(hostname="bench.example", roles=("incoming_gateway",), limits=limits),
                        SessionHolds(table))


def run(table: CountTable, clients: list[Client], rounds: int, exempt: bool) -> tuple[float, float]:
    """Microseconds per connection (connect + end) and per MAIL count."""
    checks = checks_on(table, exempt)
    sender = MailFrom("s@example.org", 0)
    start = time.perf_counter()
    for i in range(rounds):
        client = clients[i % len(clients)]
        checks.connect(client, None, None)
        checks.holds.ended(client)
    connect = (time.perf_counter() - start) / rounds * 1e6
    start = time.perf_counter()
    for i in range(rounds):
        checks.mail(clients[i % len(clients)], None, sender)  # type: ignore[arg-type]
    mail = (time.perf_counter() - start) / rounds * 1e6
    return connect, mail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=2000)
    args = parser.parse_args()
    # loopback addresses first (exempt), then the same spread over 192.x
    clients = [Client(f"127.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", (f"127.0.0.{i % 256}", 1024 + i))
               for i in range(args.clients)]
    slots = slots_for(5000)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{args.rounds} connections from {args.clients} addresses; microseconds per connection "
              "(check + release) and per MAIL")
        connect, mail = run(CountTable.private(slots), clients, args.rounds, exempt=True)
        print(f"  exempt client (loopback)      {connect:6.2f}  {mail:6.2f}")
        clients = [Client(f"192.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", c.peer)
                   for i, c in enumerate(clients)]
        connect, mail = run(CountTable.private(slots), clients, args.rounds, exempt=False)
        print(f"  one process (private table)   {connect:6.2f}  {mail:6.2f}")
        for regions in (2, 8):
            path = Path(tmp) / f"limits-{regions}"
            CountTable.allocate(path, regions, slots)
            others = [CountTable.shared(path, regions, index) for index in range(1, regions)]
            for index, other in enumerate(others):  # the other processes hold sessions of the clients
                holder = checks_on(other, exempt=False)
                for client in clients[index::regions]:
                    holder.connect(client, None, None)
            connect, mail = run(CountTable.shared(path, regions, 0), clients, args.rounds, exempt=False)
            print(f"  {regions} processes (shared file)    {connect:6.2f}  {mail:6.2f}")


if __name__ == "__main__":
    main()
