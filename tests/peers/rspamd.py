"""A real rspamd (Debian's 3.4) with a normal worker on a free loopback port and a Unix socket of its own.

Use as a pytest plugin (`pytest_plugins = ["peers.rspamd"]`) for the session-scoped `rspamd` fixture, or call
`start_rspamd()` directly. The daemon reads Debian's stock rules (/etc/rspamd, CONFDIR) with a top-level file and a
LOCAL_CONFDIR of its own, so that a scan is quick and the same every time:

- no controller or proxy, only the normal worker (`-f`, in the foreground, as root: no privileges to drop here);
- no network: DNS points at a loopback port nobody answers, and the modules that look names up or fetch maps
  (RBLs, SPF, DKIM, DMARC, ASN, fuzzy, hfilter, PTR checks ...) are off; those that need Redis turn themselves
  off, none being configured;
- test patterns as in production (`enable_test_patterns` off): rspamd 3.4 still rejects GTUBE itself, and the
  variants that would pass a message unchecked (AJS..., "no action") stay ordinary text;
- settings ids (`STRICT`, `SUBJECT`) that change the thresholds, and the milter_headers routine x-spam-status;
- `rspamd.local.lua` probes: MAILFLEET_ENVELOPE asks (milter block) for a header X-Mailfleet-Envelope that lists
  what rspamd got of the envelope (`ip=...; helo=...; from=...; rcpt=...; user=...; qid=...; mta=...`),
  MAILFLEET_SPAMMY scores 8 for `X-Mailfleet-Test: spammy`, and a pre-filter answers `ratelimit` with a soft
  reject in text only and `blocked` with a reject and a whole SMTP reply.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from waits import WaitTimeout, wait_until

from appliance.config.model import HostPort, ScannerConfig, UnixSocket

from .named import free_port

RSPAMD = "/usr/bin/rspamd"
CONFDIR = Path("/etc/rspamd")

STRICT = "mailfleet_strict"  # reject at 7 (rspamd's default is 15), add header at 5
SUBJECT = "mailfleet_subject"  # rewrite subject at 5, reject at 100
SPAMMY_SCORE = 8.0

# The modules that would ask DNS or fetch remote maps; the rest of Debian's rules run as shipped.
NETWORK_MODULES = ("rbl", "surbl", "spf", "dkim", "dmarc", "arc", "asn", "hfilter", "fuzzy_check", "phishing",
                   "multimap", "whitelist", "once_received", "emails", "mid", "reputation", "rspamd_update")

_TOP = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    .include "$CONFDIR/logging.inc"
}}
worker "normal" {{
    bind_socket = "{address}:{port}";
    bind_socket = "{socket} mode=0600";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
"""

_OPTIONS = """\
disable_hyperscan = true;
hs_cache_dir = "{hs_cache}/";
cache_file = "$DBDIR/symbols.cache";
control_socket = "$RUNDIR/control.sock mode=0600";
dns {{
    nameserver = ["127.0.0.1:{dns_port}"];
    timeout = 0.1s;
    retransmits = 1;
}}
"""

_SETTINGS = f"""\
{STRICT} {{
  id = "{STRICT}";
  apply {{
    actions {{ reject = 7.0; "add header" = 5.0; greylist = null; }}
  }}
}}
{SUBJECT} {{
  id = "{SUBJECT}";
  apply {{
    actions {{ reject = 100.0; "rewrite subject" = 5.0; "add header" = null; greylist = null; }}
  }}
}}
"""

_LUA = f"""\
-- Probes of Mailfleet's tests: what rspamd got of the envelope, and actions on demand.
rspamd_config:register_symbol({{
  name = 'MAILFLEET_ENVELOPE',
  score = 0.0,
  callback = function(task)
    local seen = {{}}
    local ip = task:get_from_ip()
    if ip and ip:is_valid() then seen[#seen + 1] = 'ip=' .. ip:to_string() end
    local helo = task:get_helo()
    if helo then seen[#seen + 1] = 'helo=' .. helo end
    local from = task:get_from('smtp')
    if from and from[1] then seen[#seen + 1] = 'from=' .. (from[1].addr or '') end
    for _, rcpt in ipairs(task:get_recipients('smtp') or {{}}) do seen[#seen + 1] = 'rcpt=' .. rcpt.addr end
    local user = task:get_user()
    if user then seen[#seen + 1] = 'user=' .. user end
    local qid = task:get_queue_id()
    if qid then seen[#seen + 1] = 'qid=' .. qid end
    local mta = task:get_request_header('MTA-Name')
    if mta then seen[#seen + 1] = 'mta=' .. tostring(mta) end
    task:insert_result('MAILFLEET_ENVELOPE', 1.0, seen)
    task:set_milter_reply({{add_headers = {{['X-Mailfleet-Envelope'] = table.concat(seen, '; ')}}}})
  end,
}})
rspamd_config:register_symbol({{
  name = 'MAILFLEET_SPAMMY',
  score = {SPAMMY_SCORE},
  callback = function(task)
    return task:get_header('X-Mailfleet-Test') == 'spammy'
  end,
}})
rspamd_config:register_symbol({{
  name = 'MAILFLEET_PRE',
  type = 'prefilter',
  priority = 10,
  callback = function(task)
    local test = task:get_header('X-Mailfleet-Test')
    if test == 'ratelimit' then
      task:set_pre_result('soft reject', 'Ratelimit exceeded: try again in a minute')
    elseif test == 'blocked' then
      task:set_pre_result('reject', '554 5.7.1 Sender blocked by local policy')
    end
  end,
}})
"""


@dataclass
class RspamdServer:
    address: str
    port: int
    socket_path: Path
    workdir: Path
    process: subprocess.Popen = field(repr=False)

    def scanner_config(self, *, unix: bool = False, settings_id: str | None = None, timeout: float = 10.0,
                       name: str = "rspamd") -> ScannerConfig:
        """A filters.scanners entry for this daemon."""
        address: HostPort | UnixSocket = UnixSocket(self.socket_path) if unix else HostPort(self.address, self.port)
        return ScannerConfig(type="rspamd", address=address, name=name, timeout=timeout, settings_id=settings_id)

    def log(self) -> str:
        path = self.workdir / "log" / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the main process (it stops its workers), then whatever of its process group is left: a hs_helper
        still compiling outlives a main process that exits under it."""
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group of its own that start_rspamd gave it
        self.process.wait()


def _closed_udp_port() -> int:
    """A loopback UDP port nothing listens on: rspamd's DNS queries get nowhere, quickly."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(workdir: Path, address: str, port: int, socket_path: Path, hs_cache: Path) -> Path:
    local = workdir / "local"
    (local / "local.d").mkdir(parents=True)
    for name in ("db", "run", "log"):
        (workdir / name).mkdir()
    top = workdir / "rspamd.conf"
    top.write_text(_TOP.format(address=address, port=port, socket=socket_path))
    (local / "local.d" / "options.inc").write_text(_OPTIONS.format(dns_port=_closed_udp_port(), hs_cache=hs_cache))
    for module in NETWORK_MODULES:
        (local / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
    (local / "local.d" / "milter_headers.conf").write_text('use = ["x-spam-status"];\n')
    (local / "local.d" / "settings.conf").write_text(_SETTINGS)
    (local / "rspamd.local.lua").write_text(_LUA)
    return top


def _pong(address: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/ping", timeout=1) as reply:
            return reply.read().strip() == b"pong"
    except (OSError, urllib.error.URLError):
        return False


def start_rspamd(workdir: Path, address: str = "127.0.0.1", hs_cache: Path | None = None,
                 timeout: float = 60.0) -> RspamdServer:
    """Start rspamd in `workdir` and return once its normal worker answers /ping with pong.

    `hs_cache` keeps what rspamd compiles at start (its TLD matcher, some 15 s of CPU) for the next start; by
    default it lives and dies with `workdir`.
    """
    port = free_port([address])
    socket_path = workdir / "run" / "normal.sock"
    top = write_config(workdir, address, port, socket_path, hs_cache or workdir / "db")
    local = workdir / "local"
    command = [RSPAMD, "-f", "-u", "root", "-g", "root", "-c", str(top),
               "--var", f"LOCAL_CONFDIR={local}", "--var", f"DBDIR={workdir / 'db'}",
               "--var", f"RUNDIR={workdir / 'run'}", "--var", f"LOGDIR={workdir / 'log'}"]
    with open(workdir / "stderr.log", "wb") as errors:
        process = subprocess.Popen(command, stdout=errors, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = RspamdServer(address, port, socket_path, workdir, process)

    def detail() -> str:
        tail = "\n".join(server.log().splitlines()[-30:])
        return (workdir / "stderr.log").read_text(errors="replace") + tail

    try:
        wait_until(lambda: process.poll() is not None or _pong(address, port), timeout,
                   f"rspamd to answer /ping on {address}:{port}", detail=detail)
        if process.poll() is not None:
            raise WaitTimeout(f"rspamd exited with {process.returncode}\n{detail()}")
        wait_until(socket_path.exists, timeout, f"rspamd's socket {socket_path}", detail=detail)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def rspamd(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[RspamdServer]:
    # pytest's cache directory (.pytest_cache) keeps rspamd's compiled matchers from one run to the next; without
    # the cache plugin (-p no:cacheprovider) rspamd compiles them afresh.
    cache = getattr(pytestconfig, "cache", None)
    hs_cache = cache.mkdir("rspamd-hs") if cache is not None else None
    server = start_rspamd(tmp_path_factory.mktemp("rspamd"), hs_cache=hs_cache)
    try:
        yield server
    finally:
        server.stop()
