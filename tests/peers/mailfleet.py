"""The appliance itself as a real peer: `mailfleet serve` in its own process, on loopback ports.

Use as a pytest plugin for the `mailfleet_factory` fixture: `start(config_dict)` fills in free ports, the data
directory and the hostname, writes mailfleet.yml, starts the server and waits until every listener answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from waits import WaitTimeout, wait_until

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
        """Start `mailfleet serve` and return once it is up: every listener answers and the service has logged
        that it is up (past that line it also takes SIGHUP as a reload)."""
        since = self.log_mark()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        # Its own process group, as systemd gives a service its own cgroup: kill() takes the SMTP workers too.
        self.proc = subprocess.Popen([*MAILFLEET, "--config", str(self.config_path), "serve"], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        for port in self.ports.values():
            wait_until(lambda port=port: self._listens(port), timeout, f"mailfleet to listen on {port}",
                       detail=self._log_tail)
        self.wait_for_log(f"mailfleet {self.config['hostname']} up: ", since=since, timeout=timeout)

    def _listens(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mailfleet exited with {self.proc.returncode}:\n{self.log()}")
        try:
            socket.create_connection((self.address, port), timeout=1).close()
        except OSError:
            return False
        return True

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
        with contextlib.suppress(WaitTimeout):  # the workers, reaped by init, may take a moment more
            wait_until(lambda: not _group_alive(self.proc.pid), 10, "the service's processes to go")

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

    def wait_for(self, predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
        return wait_until(predicate, timeout, what, detail=self._log_tail)

    def log_mark(self) -> int:
        """Where the log ends now: pass it to wait_for_log to look only at what comes after."""
        return len(self.log())

    def wait_for_log(self, text: str, since: int = 0, timeout: float = 20.0, count: int = 1) -> str:
        """Wait until `text` appears `count` times in the server's log after offset `since`; return the log."""
        def found() -> str:
            log = self.log()
            return log if log[since:].count(text) >= count else ""

        return wait_until(found, timeout, f"{count}x {text!r} in the server log", detail=self._log_tail)

    def _log_tail(self) -> str:
        return f"--- server log ---\n{self.log()[-4000:]}"

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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


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
