"""Postfix's own `smtp-sink` as a second, independent SMTP implementation to deliver to.

Use as a pytest plugin (`pytest_plugins = ["peers.postfix_sink"]`) for the `postfix_sink` fixture. Each
message is dumped to a file whose X-Helo-Args / X-Mail-Args / X-Rcpt-Args headers record the envelope.
"""

from __future__ import annotations

import email
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest
from waits import WaitTimeout, wait_until

from .named import free_port
from .process import stop_process

SMTP_SINK = "/usr/sbin/smtp-sink"


@dataclass
class PostfixSink:
    address: str
    port: int
    dump_dir: Path
    process: subprocess.Popen = field(repr=False)

    def messages(self) -> list[Message]:
        """Dumped messages, oldest first; the envelope is in the X-*-Args headers."""
        files = sorted(self.dump_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        return [email.message_from_bytes(p.read_bytes()) for p in files]

    def stop(self) -> None:
        stop_process(self.process)


def start_postfix_sink(
    workdir: Path,
    address: str = "127.0.0.1",
    port: int | None = None,
    *,
    hard_reject: Sequence[str] = (),
    soft_reject: Sequence[str] = (),
    flags: Sequence[str] = (),
) -> PostfixSink:
    """Start smtp-sink; `hard_reject` / `soft_reject` name commands it answers 5xx / 4xx (e.g. "ehlo");
    `flags` are more smtp-sink options, e.g. ("-8",) to withhold 8BITMIME."""
    if not Path(SMTP_SINK).exists():
        raise RuntimeError(f"{SMTP_SINK} is missing: install Debian's postfix package")
    port = port or free_port([address])
    dump_dir = workdir / f"smtp-sink-{address}-{port}"
    dump_dir.mkdir(parents=True)
    args = [SMTP_SINK, "-u", "root", "-d", f"{dump_dir}/", *flags]
    if hard_reject:
        args += ["-f", ",".join(hard_reject)]
    if soft_reject:
        args += ["-r", ",".join(soft_reject)]
    host = f"[{address}]" if ":" in address else address
    args += [f"{host}:{port}", "64"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sink = PostfixSink(address, port, dump_dir, process)
    _wait_greeting(sink)
    return sink


def _wait_greeting(sink: PostfixSink, timeout: float = 10.0) -> None:
    def greets() -> bool:
        if sink.process.poll() is not None:
            err = sink.process.stderr.read().decode(errors="replace") if sink.process.stderr else ""
            raise RuntimeError(f"smtp-sink exited with {sink.process.returncode}: {err}")
        try:
            with socket.create_connection((sink.address, sink.port), timeout=1) as conn:
                return conn.recv(512).startswith(b"220")
        except OSError:
            return False

    try:
        wait_until(greets, timeout, f"smtp-sink on {sink.address}:{sink.port} to greet")
    except WaitTimeout:
        sink.stop()
        raise


@pytest.fixture
def postfix_sink(tmp_path: Path) -> Iterator[Callable[..., PostfixSink]]:
    """`postfix_sink("127.0.0.71", port, hard_reject=["ehlo"])` -> a running Postfix smtp-sink."""
    sinks: list[PostfixSink] = []

    def start(address: str = "127.0.0.1", port: int | None = None, **kwargs) -> PostfixSink:
        if not Path(SMTP_SINK).exists():
            pytest.fail(f"{SMTP_SINK} missing: `make apt` installs Debian's postfix")
        sink = start_postfix_sink(tmp_path, address, port, **kwargs)
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()
