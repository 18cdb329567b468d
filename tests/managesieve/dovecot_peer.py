"""Debian's Dovecot managesieved (Pigeonhole) on a loopback port of our range, for side-by-side transcripts.

Dovecot runs in the foreground with its own config (no system instance), users in a passwd-file, the same
limits as the Mailfleet variant it is compared with (sieve.max_script_size 2048, max_scripts 3).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from peers.named import free_port
from waits import WaitTimeout, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
ADDRESS = "127.0.54.3"

CONFIG = """
protocols = sieve
listen = {address}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_privileged_group =
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home/%d/%n
}}
mail_location = maildir:~/Maildir
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
  sieve_max_script_size = 2048
  sieve_quota_max_scripts = 3
  sieve_max_redirects = 4
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {port}
  }}
  chroot =
}}
service auth {{
  user = root
}}
service auth-worker {{
  user = root
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class Dovecot:
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_managesieved(base: Path, users: dict[str, str]) -> Dovecot:
    """Dovecot with ManageSieve alone, users ``address -> password``; the homes belong to the dovecot user."""
    account = pwd.getpwnam("dovecot")
    for sub in ("run", "state", "home"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for directory in (base, base / "run", base / "home"):
        os.chmod(directory, 0o755)
    os.chown(base / "home", account.pw_uid, account.pw_gid)
    port = free_port([ADDRESS])
    (base / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
    (base / "dovecot.conf").write_text(CONFIG.format(address=ADDRESS, base=base, port=port, uid=account.pw_uid,
                                                     gid=account.pw_gid))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(base / "dovecot.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def greets() -> bool:
        if process.poll() is not None:
            raise RuntimeError("dovecot exited: " + process.stderr.read().decode(errors="replace"))
        try:
            with socket.create_connection((ADDRESS, port), timeout=1) as sock:
                return b"IMPLEMENTATION" in sock.recv(200)
        except OSError:
            return False

    try:
        wait_until(greets, 20, "dovecot managesieved to greet", detail=lambda: _log(base))
    except WaitTimeout:
        process.kill()
        raise
    return Dovecot(port, process)


def _log(base: Path) -> str:
    try:
        return (base / "dovecot.log").read_text(errors="replace")[-3000:]
    except FileNotFoundError:
        return ""
