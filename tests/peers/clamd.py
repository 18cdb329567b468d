"""A real ClamAV daemon (Debian's clamav-daemon, /usr/sbin/clamd) with a signature database the tests build.

No official database can be downloaded here, so the database holds two signatures of our own: an `.ndb` body
signature for the EICAR test string (target type 0: any file), and an `.hdb` MD5 signature, made with
`sigtool --md5`, of a second test file (`HDB_FILE`). clamd reports unsigned signatures with `.UNOFFICIAL`
appended (`EICAR_FOUND`, `HDB_FOUND`).

Use as a pytest plugin (`pytest_plugins = ["peers.clamd"]`) for the session-scoped `clamd` fixture (one
daemon on a Unix socket and a loopback TCP port, both answering) and `clamd_factory` for more instances with
other clamd.conf options; or call `start_clamd()` directly (benchmarks).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from waits import WaitTimeout, wait_until

from appliance.config.model import HostPort, UnixSocket

from .named import free_port
from .process import stop_process

CLAMD = "/usr/sbin/clamd"
SIGTOOL = "/usr/bin/sigtool"

# The EICAR anti-virus test file (www.eicar.org): 68 printable characters every scanner detects as a test.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Mailfleet.Test.EICAR"
HDB_FILE = b"Mailfleet's second test file: its MD5 is a signature of the test database.\n" * 4
HDB_SIGNATURE = "Mailfleet.Test.File"
EICAR_FOUND = f"{EICAR_SIGNATURE}.UNOFFICIAL"
HDB_FOUND = f"{HDB_SIGNATURE}.UNOFFICIAL"

STREAM_MAX_LENGTH = 1024 * 1024  # small, so a test message can be over it
MAX_RECURSION = 8  # archives nested deeper than this give Heuristics.Limits.Exceeded.MaxRecursion


@dataclass
class ClamdServer:
    workdir: Path
    socket_path: Path
    host: str
    port: int
    process: subprocess.Popen = field(repr=False)

    @property
    def unix(self) -> UnixSocket:
        return UnixSocket(self.socket_path)

    @property
    def tcp(self) -> HostPort:
        return HostPort(self.host, self.port)

    def log(self) -> str:
        parts = [self.workdir / "clamd.log", self.workdir / "clamd.stderr"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop(self) -> None:
        stop_process(self.process)


def build_database(directory: Path) -> Path:
    """The test signature database in `directory`: mailfleet.ndb (EICAR) and mailfleet.hdb (HDB_FILE)."""
    directory.mkdir(parents=True, exist_ok=True)
    # .ndb: Name:TargetType:Offset:HexSignature; target type 0 is any file, offset * anywhere in it.
    (directory / "mailfleet.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
    sample = directory.parent / "hdb-sample.bin"
    sample.write_bytes(HDB_FILE)
    # sigtool prints MD5:Size:FileName; the file's name becomes the signature's.
    line = subprocess.run([SIGTOOL, "--md5", str(sample)], check=True, capture_output=True, text=True).stdout
    md5, size, _ = line.strip().split(":", 2)
    (directory / "mailfleet.hdb").write_text(f"{md5}:{size}:{HDB_SIGNATURE}\n")
    return directory


def clamd_conf(workdir: Path, database: Path, port: int, host: str = "127.0.0.1",
               options: Mapping[str, str] | None = None) -> str:
    """A clamd.conf for a daemon in the foreground, all its files under `workdir`; `options` add or replace."""
    settings = {
        "Foreground": "yes",
        "LocalSocket": str(workdir / "clamd.sock"),
        "TCPSocket": str(port),
        "TCPAddr": host,
        "DatabaseDirectory": str(database),
        "TemporaryDirectory": str(workdir / "tmp"),
        "LogFile": str(workdir / "clamd.log"),
        "StreamMaxLength": str(STREAM_MAX_LENGTH),
        "ScanArchive": "yes",
        "ScanMail": "yes",
        "AlertExceedsMax": "yes",
        "MaxFileSize": str(STREAM_MAX_LENGTH),
        "MaxScanSize": str(4 * STREAM_MAX_LENGTH),
        "MaxRecursion": str(MAX_RECURSION),
        # No self-check of the database during a run: nothing changes it.
        "SelfCheck": "0",
        **(options or {}),
    }
    return "".join(f"{key} {value}\n" for key, value in settings.items())


def start_clamd(workdir: Path, *, database: Path | None = None, host: str = "127.0.0.1",
                options: Mapping[str, str] | None = None, timeout: float = 60.0) -> ClamdServer:
    """Start clamd with its config, socket, log and (unless given) database under `workdir`; return once it
    answers PING on its Unix socket."""
    for program in (CLAMD, SIGTOOL):
        if not Path(program).exists():
            raise RuntimeError(f"{program} is missing: install Debian's clamav and clamav-daemon packages")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    database = database or build_database(workdir / "db")
    port = free_port([host])
    conf = workdir / "clamd.conf"
    conf.write_text(clamd_conf(workdir, database, port, host, options))
    with open(workdir / "clamd.stderr", "wb") as stderr:
        process = subprocess.Popen([CLAMD, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                   stdout=stderr, stderr=stderr)
    server = ClamdServer(workdir, workdir / "clamd.sock", host, port, process)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"clamd exited with {process.returncode}:\n{server.log()}")
        return ping(server.socket_path) and ping((host, port))

    try:
        wait_until(answers, timeout, f"clamd in {workdir} to answer PING", server.log)
    except (WaitTimeout, RuntimeError):
        server.stop()
        raise
    return server


def ping(address: Path | tuple[str, int]) -> bool:
    """True when a clamd answers zPING with PONG at `address` (a Unix socket path or a TCP address)."""
    family = socket.AF_UNIX if isinstance(address, Path) else socket.AF_INET
    target = str(address) if isinstance(address, Path) else address
    try:
        with socket.socket(family, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(target)
            conn.sendall(b"zPING\0")
            return conn.recv(64) == b"PONG\0"
    except OSError:
        return False


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """One clamd for the session (it loads its database once): `clamd.unix`, `clamd.tcp` are its addresses."""
    server = _started(tmp_path_factory.mktemp("clamd"))
    yield server
    server.stop()


@pytest.fixture
def clamd_factory(tmp_path: Path) -> Iterator[Callable[..., ClamdServer]]:
    """`clamd_factory(options={"ExtendedDetectionInfo": "yes"})` -> another running clamd, stopped after the
    test."""
    servers: list[ClamdServer] = []

    def start(**kwargs) -> ClamdServer:
        server = _started(tmp_path / f"clamd-{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _started(workdir: Path, **kwargs) -> ClamdServer:
    if not Path(CLAMD).exists():
        pytest.fail(f"{CLAMD} missing: `make apt` installs Debian's clamav-daemon")
    return start_clamd(workdir, **kwargs)
