"""The appliance itself as a real peer: `mailfleet serve` in its own process, on loopback ports.

Use as a pytest plugin for the `mailfleet_factory` fixture: `start(config_dict)` fills in free ports, the data
directory and the hostname, writes mailfleet.yml, starts the server and waits until every listener answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .named import free_port

MAILFLEET = [sys.executable, "-m", "appliance.cli.main"]


@dataclass
class RunningMailfleet:
    config_path: Path
    config: dict[str, Any]
    log_path: Path
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    address: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return Path(self.config["data_dir"])

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        # Its own process group, as systemd gives a service its own cgroup: kill() takes the SMTP workers too.
        self.proc = subprocess.Popen([*MAILFLEET, "--config", str(self.config_path), "serve"], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mailfleet exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    socket.create_connection((self.address, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"mailfleet did not listen on {port}:\n{self.log()}") from None
                    time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL to every process of the service: the crash the durability promise is about."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the workers, reaped by init, may take a moment more
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*MAILFLEET, "--config", str(self.config_path), *args], capture_output=True,
                              text=True, input=input, timeout=60)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n--- server log ---\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def queue_ids(self) -> list[str]:
        msg_dir = self.data_dir / "spool" / "msg"
        return sorted(os.listdir(msg_dir)) if msg_dir.exists() else []

    def mailbox_files(self, address: str, folder: str = "") -> list[Path]:
        """Message files in a local user's Maildir (new/ and cur/ of INBOX or a '.Folder')."""
        local, _, domain = address.partition("@")
        base = self.data_dir / "mail" / domain.lower() / local.lower()
        if folder:
            base = base / f".{folder}"
        return sorted(p for sub in ("new", "cur") for p in (base / sub).glob("*") if p.is_file())


@pytest.fixture
def mailfleet_factory(tmp_path: Path) -> Iterator[Callable[..., RunningMailfleet]]:
    started: list[RunningMailfleet] = []

    def start(config: dict[str, Any], services: tuple[str, ...] = ("smtp",), address: str = "127.0.0.1",
              name: str = "mf", run: bool = True) -> RunningMailfleet:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        config = dict(config)
        config.setdefault("hostname", f"{name}.test.example")
        config.setdefault("data_dir", str(workdir / "data"))
        config.setdefault("tls", {"plaintext_auth_on_loopback": True})
        listen = dict(config.get("listen") or {})
        ports = {}
        for service in services:
            if service not in listen:
                port = free_port([address])
                listen[service] = [f"{address}:{port}"]
            ports[service] = int(listen[service][0].rsplit(":", 1)[1])
        config["listen"] = listen
        path = workdir / "mailfleet.yml"
        path.write_text(yaml.safe_dump(config))
        server = RunningMailfleet(path, config, workdir / "server.log", ports=ports, address=address)
        started.append(server)
        if run:
            server.start()
        return server

    yield start
    for server in started:
        server.kill()
