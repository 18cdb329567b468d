"""What the benchmarks that measure Mailfleet beside another server share around their measurements: the common
options, the checks before a run, the order in which the servers take turns, the best of the repeats and the
time-to-250 percentiles. Used by scan_throughput.py and auth_throughput.py."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from smtp_throughput import REPO


class Measured(Protocol):
    @property
    def rate(self) -> float: ...

    def percentile(self, p: float) -> float: ...

    errors: str


class Stoppable(Protocol):
    def stop(self) -> None: ...


M = TypeVar("M", bound=Measured)
S = TypeVar("S")


def add_common_options(p: argparse.ArgumentParser, messages: int, timeout: float) -> None:
    p.add_argument("--messages", type=int, default=messages, help=f"messages per measurement (default {messages})")
    p.add_argument("--sessions", default="10,50", help="parallel sessions, comma separated (default 10,50)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per case and server; the best counts")
    p.add_argument("--timeout", type=float, default=timeout,
                   help=f"bound on each measurement, seconds (default {timeout:.0f})")
    p.add_argument("--only", choices=["postfix", "mailfleet"], help="run one server only")
    p.add_argument("--mailfleet-src", type=Path, default=REPO,
                   help="run the `appliance` package found in this directory (A/B runs against another checkout)")
    p.add_argument("--smtp-workers", help="Mailfleet's smtp.workers setting (default: the config default)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs) for inspection")


def preflight(me: str, why_root: str, tools: Sequence[str], install: str) -> int | None:
    """Exit code 2 with a one-line reason when not root or a tool is missing; None when all is there."""
    if os.geteuid() != 0:
        print(f"{me}: run as root ({why_root})", file=sys.stderr)
        return 2
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print(f"{me}: {', '.join(missing)} not found; apt-get install {install}", file=sys.stderr)
        return 2
    return None


def stop_all(started: Sequence[Stoppable], workdir: Path, keep: bool) -> None:
    """Stop what a run started, last first, and remove its work dir unless asked to keep it."""
    for part in reversed(started):
        part.stop()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)


def failed(exc: Exception) -> int:
    """A step of the run failed: say which (BenchError's message) and end with exit code 1."""
    print(f"bench: {exc}", file=sys.stderr)
    return 1


def conclude(results: Sequence[M], print_table: Callable[[Sequence[M]], None]) -> int:
    """The table after the run; exit code 1 when a measurement failed (the table says which), else 0."""
    print()
    print_table(results)
    return 1 if any(r.errors for r in results) else 0


def progress(label: str, r: Measured, cpu: str) -> None:
    """One measurement as it is done: msg/s, the time to 250 and the CPU per message (`cpu`, already put)."""
    note = f"  ({r.errors})" if r.errors else ""
    print(f"  {label}: {r.rate:7,.1f} msg/s, p50 {r.percentile(50):5,.0f} ms, p99 {r.percentile(99):5,.0f} ms; "
          f"CPU ms/msg {cpu}{note}", flush=True)


def in_turns(servers: Sequence[S], repeat: int) -> Iterator[tuple[int, S]]:
    """(repeat, server): every server runs all along and they take turns, the order flipped at every repeat, so
    that a change in the machine's load hits all alike."""
    for rep in range(repeat):
        for server in (servers if rep % 2 == 0 else servers[::-1]):
            yield rep, server


def best_of(results: Sequence[M], key: Callable[[M], Hashable]) -> dict[Hashable, M]:
    """Per key (server and case), the fastest measurement that succeeded (a failed one only if all failed)."""
    keyed: dict[Hashable, M] = {}
    for r in results:
        held = keyed.get(key(r))
        if held is None or (held.errors and not r.errors) or (not r.errors and r.rate > held.rate):
            keyed[key(r)] = r
    return keyed


def nearest_rank(latencies: Sequence[float], p: float) -> float:
    """The p-th percentile of `latencies` (seconds) by nearest rank, in milliseconds; 0 without any."""
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000
