"""Module-scoped real servers for the inbound SMTP suite: one `mailfleet serve` process per configuration.

Starting the appliance costs about a second, so each test module starts the hosts it needs once and its tests
share them; every test marks its messages with a unique string and looks only for those.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from peers.mailfleet import MAILFLEET, RunningMailfleet
from peers.named import free_port
from peers.smtp_sink import Sink, start_sink

from .probes import HAS_IPV6, PASSWORD


@pytest.fixture(scope="session")
def password_hash() -> str:
    """An argon2 hash of PASSWORD, made by the appliance's own CLI (what an operator would do)."""
    done = subprocess.run([*MAILFLEET, "hash-password", "--password-stdin"], input=PASSWORD + "\n",
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def sinks() -> Iterator[Callable[..., Sink]]:
    """Real aiosmtpd sinks on loopback, kept for the whole module."""
    started: list[Sink] = []

    def start(address: str = "127.0.0.1", **kwargs: Any) -> Sink:
        sink = start_sink(address, **kwargs)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


@pytest.fixture(scope="module")
def module_mailfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningMailfleet]]:
    """Like `mailfleet_factory`, once per module; `dual_stack=True` also listens on [::1] (same port)."""
    started: list[RunningMailfleet] = []

    def start(config: dict[str, Any], services: tuple[str, ...] = ("smtp",), name: str = "mf",
              dual_stack: bool = False) -> RunningMailfleet:
        workdir: Path = tmp_path_factory.mktemp(name)
        config = dict(config)
        config.setdefault("hostname", f"{name}.test.example")
        config.setdefault("data_dir", str(workdir / "data"))
        config.setdefault("tls", {"plaintext_auth_on_loopback": True})
        # Should anything ever be routed by MX, ask a loopback port where no DNS server listens: the tests
        # never send a query beyond this host.
        config.setdefault("dns", {"nameservers": ["127.0.0.1"], "port": free_port(["127.0.0.1"]), "timeout": "1s"})
        listen = dict(config.get("listen") or {})
        ports = {}
        for service in services:
            if service == "smtp" and dual_stack and HAS_IPV6:
                port = free_port(["127.0.0.1", "::1"])
                listen[service] = [f"127.0.0.1:{port}", f"[::1]:{port}"]
            else:
                port = free_port(["127.0.0.1"])
                listen[service] = [f"127.0.0.1:{port}"]
            ports[service] = port
        config["listen"] = listen
        path = workdir / "mailfleet.yml"
        path.write_text(yaml.safe_dump(config))
        server = RunningMailfleet(path, config, workdir / "server.log", ports=ports)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()
