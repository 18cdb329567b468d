"""A real SpamAssassin `spamd` (Debian's spamd package) on a free loopback port and a Unix socket.

Use as a pytest plugin (`pytest_plugins = ["peers.spamd"]`) for the session-scoped `spamd` fixture (spamd takes
seconds to compile its rules, so one daemon serves every test), or call `start_spamd()` directly.

The daemon runs Debian's shipped rules (/usr/share/spamassassin, GTUBE among them; no sa-update here) with a
site config of its own: the plugin-loading *.pre files copied from /etc/spamassassin, and a local.cf that turns
off what would make answers depend on history or the network (Bayes, auto-learning, DNS). `--local` skips every
network test; `--nouser-config` reads no ~/.spamassassin.

Started as root, spamd is told to run as `nobody` (--username), as a deployment runs it as its own user. It
takes that identity before it reads the site config and writes its pid file, so those (and the Unix socket) are
in a directory of their own that `nobody` owns: pytest's temporary directories are root's alone. The log stays
in the test's directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from waits import WaitTimeout, wait_until

from appliance.config.model import HostPort, ScannerConfig, UnixSocket

from .named import free_port
from .process import stop_process

SPAMD = "/usr/sbin/spamd"
RULES = Path("/usr/share/spamassassin")  # the rules Debian ships (DEF_RULES_DIR)
PLUGINS = Path("/etc/spamassassin")  # its *.pre files load the plugins those rules need
USER = "nobody"  # whom spamd runs as when started as root

LOCAL_CF = """\
# Written by tests/peers/spamd.py: the same answer for the same message, whatever ran before.
required_score 5.0
use_bayes 0
bayes_auto_learn 0
dns_available no
"""


@dataclass
class SpamdServer:
    address: str
    port: int
    socket_path: Path
    workdir: Path  # the log
    rundir: Path  # the site config, the pid file and the Unix socket
    process: subprocess.Popen = field(repr=False)

    @property
    def tcp(self) -> HostPort:
        return HostPort(self.address, self.port)

    @property
    def unix(self) -> UnixSocket:
        return UnixSocket(self.socket_path)

    def scanner_config(self, address: HostPort | UnixSocket | None = None, **kwargs) -> ScannerConfig:
        """A filters.scanners entry for this daemon (its TCP port unless `address` says otherwise)."""
        kwargs.setdefault("name", "spamassassin")
        return ScannerConfig(type="spamassassin", address=address or self.tcp, **kwargs)

    def log(self) -> str:
        return (self.workdir / "spamd.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM: spamd stops its children and removes its pid file and socket."""
        stop_process(self.process, grace=20.0)
        shutil.rmtree(self.rundir, ignore_errors=True)


def start_spamd(workdir: Path, address: str = "127.0.0.1", port: int | None = None, children: int = 4,
                timeout: float = 180.0) -> SpamdServer:
    """Start spamd listening on address:port and on workdir/spamd.sock; return once it answers PING.

    Raises RuntimeError with spamd's own log when it exits or never answers.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port([address])
    rundir = Path(tempfile.mkdtemp(prefix="spamd-"))
    site = rundir / "site"
    site.mkdir()
    for pre in sorted(PLUGINS.glob("*.pre")):
        shutil.copyfile(pre, site / pre.name)
    (site / "local.cf").write_text(LOCAL_CF)
    identity: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam(USER)
        for path in (rundir, site, *site.iterdir()):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        identity = [f"--username={USER}", f"--helper-home-dir={rundir}"]
    socket_path = rundir / "spamd.sock"
    host = f"[{address}]" if ":" in address else address
    args = [
        SPAMD,
        f"--listen={host}:{port}",
        f"--listen={socket_path}",
        f"--max-children={children}",
        f"--min-children={min(2, children)}",
        f"--pidfile={rundir / 'spamd.pid'}",
        f"--configpath={RULES}",
        f"--siteconfigpath={site}",
        "--local",
        "--nouser-config",
        "--syslog=stderr",
        *identity,
    ]
    log = open(workdir / "spamd.log", "wb")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    server = SpamdServer(address, port, socket_path, workdir, rundir, process)
    _wait_ready(server, timeout)
    return server


def ping(address: str, port: int, timeout: float = 2.0) -> bytes:
    """PING over SPAMC/1.5 (which wants the empty header section too, spamd bug 6187); spamd's status line."""
    with socket.create_connection((address, port), timeout=timeout) as conn:
        conn.sendall(b"PING SPAMC/1.5\r\n\r\n")
        answer = b""
        while chunk := conn.recv(256):
            answer += chunk
    return answer


def _wait_ready(server: SpamdServer, timeout: float) -> None:
    def answers() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(f"spamd exited with {server.process.returncode}:\n{server.log()}")
        try:
            return ping(server.address, server.port).startswith(b"SPAMD/1.5 0 PONG")
        except OSError:
            return False

    try:
        wait_until(answers, timeout, f"spamd on {server.address}:{server.port} to answer PING", detail=server.log)
    except WaitTimeout:
        server.stop()
        raise


@pytest.fixture(scope="session")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpamdServer]:
    """One spamd for the whole session, on a free loopback port and a Unix socket."""
    if not Path(SPAMD).exists():
        pytest.fail(f"{SPAMD} missing: `make apt` installs Debian's spamd package")
    server = start_spamd(tmp_path_factory.mktemp("spamd"))
    yield server
    server.stop()
