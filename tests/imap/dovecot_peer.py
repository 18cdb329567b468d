"""A real Dovecot IMAP server (Debian's dovecot-imapd) on a loopback port, for side-by-side comparison.

It serves a Maildir++ tree with the same layout as our store (``<root>/<domain>/<localpart>/``), so
the same messages can be loaded into both.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from waits import WaitTimeout, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONFIG = """
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
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
mail_location = maildir:{mail}/%d/%n
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = subscribe
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
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
service imap-login {{
  chroot =
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Dovecot:
    base: Path
    mail: Path
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_dovecot(base: Path, mail: Path, users: dict[str, str]) -> Dovecot:
    """Start Dovecot in the foreground (-F) with its own config, users ``address -> password``.

    Dovecot refuses to access mail as root, so the mail tree is handed to the ``dovecot`` system
    user; ``base`` and ``mail`` must therefore be reachable by that user (not under a 0700 dir).
    """
    import os
    import pwd

    account = pwd.getpwnam("dovecot")
    base.mkdir(parents=True, exist_ok=True)
    mail.mkdir(parents=True, exist_ok=True)
    for directory in (base, mail):
        os.chmod(directory, 0o755)
    for root, dirs, files in os.walk(mail):
        for name in dirs + files:
            os.chown(os.path.join(root, name), account.pw_uid, account.pw_gid)
    os.chown(mail, account.pw_uid, account.pw_gid)
    for sub in ("run", "state", "home"):
        (base / sub).mkdir(exist_ok=True)
    os.chmod(base / "run", 0o755)
    port = free_port()
    (base / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
    (base / "dovecot.conf").write_text(CONFIG.format(base=base, mail=mail, port=port, uid=account.pw_uid,
                                                     gid=account.pw_gid))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(base / "dovecot.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    def greets() -> bool:
        if process.poll() is not None:
            raise RuntimeError("dovecot exited: " + process.stderr.read().decode(errors="replace"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                return sock.recv(100).startswith(b"* OK")
        except OSError:
            return False

    try:
        wait_until(greets, 20, "dovecot to greet")
    except WaitTimeout:
        process.kill()
        raise
    return Dovecot(base, mail, port, process)
