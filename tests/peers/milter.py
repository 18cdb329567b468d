"""Real milters for the milter client's tests: a scriptable one on libmilter, OpenDKIM, and a hostile one.

Use as a pytest plugin (`pytest_plugins = ["peers.milter"]`):

- ``scripted_milter(script, unix=False)`` starts tests/peers/milter_app.py under Debian's /usr/bin/python3
  (pymilter over the real libmilter) on a free loopback port or a Unix socket; ``events()`` reads what its
  callbacks saw.
- ``opendkim()`` starts Debian's OpenDKIM as a signing milter (Mode s) with a key made by opendkim-genkey.
- ``raw_milter(answers)`` is a milter of our own on a socket, for what libmilter never sends: it answers the
  n-th packet that wants a reply with ``answers[n]`` (bytes; None: no answer), then stays silent.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from waits import wait_until

from appliance.config.model import HostPort, UnixSocket

from .named import free_port

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-milter; not the virtualenv's
MILTER_APP = Path(__file__).with_name("milter_app.py")
OPENDKIM = "/usr/sbin/opendkim"
OPENDKIM_GENKEY = "/usr/sbin/opendkim-genkey"
NO_REPLY = (b"D", b"A", b"Q", b"K")  # SMFIC_MACRO, SMFIC_ABORT, SMFIC_QUIT, SMFIC_QUIT_NC


@dataclass
class MilterProcess:
    address: HostPort | UnixSocket
    process: subprocess.Popen = field(repr=False)
    log: Path
    events_file: Path | None = None

    def events(self) -> list[dict]:
        """What the scripted milter's callbacks saw, in order: {"event", "args", "macros"} each."""
        assert self.events_file is not None
        if not self.events_file.exists():
            return []
        text = self.events_file.read_text(encoding="utf-8")
        # Only whole lines: the milter may be writing the next one while we read.
        complete = text[:text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines()]

    def names(self) -> list[str]:
        return [event["event"] for event in self.events()]

    def wait_for(self, name: str, count: int = 1) -> list[dict]:
        """The events once ``count`` of ``name`` have been recorded (abort and close come with no reply)."""
        wait_until(lambda: self.names().count(name) >= count, what=f"{count} {name} event(s) at the milter",
                   detail=lambda: f"events: {self.names()}\nlog: {self.output()}")
        return self.events()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _listening(address: HostPort | UnixSocket, process: subprocess.Popen, log: Path) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the milter exited with {process.returncode}: {log.read_text(errors='replace')}")
        family = socket.AF_UNIX if isinstance(address, UnixSocket) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(address.path) if isinstance(address, UnixSocket) else (address.host,
                                                                                         address.port))
            except OSError:
                return False
        return True

    wait_until(ready, what=f"the milter to listen on {address}")


def _spec(address: HostPort | UnixSocket) -> str:
    return f"unix:{address.path}" if isinstance(address, UnixSocket) else f"inet:{address.port}@{address.host}"


def start_scripted_milter(workdir: Path, script: dict, unix: bool = False) -> MilterProcess:
    if not Path(SYSTEM_PYTHON).exists():
        raise RuntimeError(f"{SYSTEM_PYTHON} is missing: install Debian's python3 and python3-milter")
    workdir.mkdir(parents=True, exist_ok=True)
    address: HostPort | UnixSocket = (UnixSocket(workdir / "milter.sock") if unix
                                      else HostPort("127.0.0.1", free_port(["127.0.0.1"])))
    script_file = workdir / "script.json"
    script_file.write_text(json.dumps(script), encoding="utf-8")
    events = workdir / "events.jsonl"
    log = workdir / "milter.log"
    with log.open("wb") as out:
        process = subprocess.Popen([SYSTEM_PYTHON, "-I", str(MILTER_APP), _spec(address), str(script_file),
                                    str(events)], stdout=out, stderr=subprocess.STDOUT)
    milter = MilterProcess(address, process, log, events)
    try:
        _listening(address, process, log)
    except BaseException:
        milter.stop()
        raise
    return milter  # the probe's connection ended before any negotiation: libmilter called back nothing


@pytest.fixture
def scripted_milter(tmp_path: Path) -> Iterator[Callable[..., MilterProcess]]:
    started: list[MilterProcess] = []

    def start(script: dict | None = None, unix: bool = False) -> MilterProcess:
        milter = start_scripted_milter(tmp_path / f"milter-{len(started)}", script or {}, unix=unix)
        started.append(milter)
        return milter

    yield start
    for milter in started:
        milter.stop()


@dataclass
class OpenDKIM(MilterProcess):
    domain: str = "example.test"
    selector: str = "mail"
    public_key: bytes = b""  # DER SubjectPublicKeyInfo, from the key's DNS record (p=...)


def start_opendkim(workdir: Path, domain: str = "example.test", selector: str = "mail") -> OpenDKIM:
    if not Path(OPENDKIM).exists() or shutil.which(OPENDKIM_GENKEY) is None:
        raise RuntimeError(f"{OPENDKIM} or {OPENDKIM_GENKEY} is missing: install Debian's opendkim and "
                           f"opendkim-tools")
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([OPENDKIM_GENKEY, "-b", "1024", "-d", domain, "-s", selector, "-D", str(workdir)], check=True,
                   capture_output=True)
    record = (workdir / f"{selector}.txt").read_text()
    public = "".join(part for part in record.split('"')[1::2]).split("p=", 1)[1].split(";")[0]
    port = free_port(["127.0.0.1"])
    config = workdir / "opendkim.conf"
    config.write_text(f"""Mode s
Domain {domain}
KeyFile {workdir / f"{selector}.private"}
Selector {selector}
Socket inet:{port}@127.0.0.1
Background no
Syslog no
RequireSafeKeys no
PidFile {workdir / "opendkim.pid"}
""")
    log = workdir / "opendkim.log"
    with log.open("wb") as out:
        process = subprocess.Popen([OPENDKIM, "-f", "-x", str(config)], stdout=out, stderr=subprocess.STDOUT)
    milter = OpenDKIM(HostPort("127.0.0.1", port), process, log, domain=domain, selector=selector,
                      public_key=base64.b64decode(public))
    try:
        _listening(milter.address, process, log)
    except BaseException:
        milter.stop()
        raise
    return milter


@pytest.fixture
def opendkim(tmp_path: Path) -> Iterator[OpenDKIM]:
    milter = start_opendkim(tmp_path / "opendkim")
    yield milter
    milter.stop()


class RawMilter:
    """A milter that answers each packet it reads with the bytes it was given, whatever they are; the packets
    that have no reply in the protocol (macros, abort, quit) get none."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.received: list[bytes] = []  # the command bytes of each packet read
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = HostPort("127.0.0.1", self._server.getsockname()[1])
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while True:
                conn, _ = self._server.accept()
                self._connections.append(conn)
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
        except OSError:
            return  # closed

    def _answer(self, conn: socket.socket) -> None:
        buffer = b""
        answered = 0
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                    length = int.from_bytes(buffer[:4], "big")
                    command = buffer[4:5]
                    self.received.append(command)
                    buffer = buffer[4 + length:]
                    if command in NO_REPLY:
                        continue
                    answer = self.answers[answered] if answered < len(self.answers) else None
                    answered += 1
                    if answer is not None:
                        conn.sendall(answer)
        except OSError:
            return

    def close(self) -> None:
        self._server.close()
        for conn in self._connections:
            conn.close()


@pytest.fixture
def raw_milter() -> Iterator[Callable[[list[bytes | None]], RawMilter]]:
    started: list[RawMilter] = []

    def start(answers: list[bytes | None]) -> RawMilter:
        milter = RawMilter(answers)
        started.append(milter)
        return milter

    yield start
    for milter in started:
        milter.close()
