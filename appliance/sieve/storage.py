"""Each user's Sieve scripts on disk: ``<data_dir>/sieve/<domain>/<local part>/``.

One file per script (``<name>.sieve``, the name as the user gave it, RFC 5804 §1.6) and a file ``active``
holding the active script's name (no file: no active script, the implicit keep alone). Every write is atomic
(temporary file, fsync, rename, fsync of the directory), so a crash leaves the old script or the new one,
never half of one; ManageSieve (writer) and local delivery (reader) need no lock between them.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from appliance.durable.files import fsync_dir, write_all

ACTIVE = "active"
SUFFIX = ".sieve"
MAX_NAME = 128  # characters; RFC 5804 §1.6 leaves the limit to the server


class ScriptNameError(ValueError):
    """A script name a user may not choose (RFC 5804 §1.6: no control characters; here also no '/')."""


class ScriptNotFound(LookupError):
    pass


def check_name(name: str) -> str:
    """The name in Unicode NFC (RFC 5804 §1.6 compares names as net-unicode), or ScriptNameError."""
    name = unicodedata.normalize("NFC", name)
    if not name or len(name) > MAX_NAME:
        raise ScriptNameError(f"script name must be 1 to {MAX_NAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name) or "/" in name:
        raise ScriptNameError("script name contains a control character or '/'")
    if name in (".", "..") or name.startswith("."):
        raise ScriptNameError("script name must not start with '.'")
    return name


class ScriptStore:
    """The scripts of every user under ``root`` (``config.data_dir / "sieve"``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, address: str) -> Path:
        local, _, domain = address.lower().rpartition("@")
        return self.root / domain / local

    def names(self, address: str) -> list[str]:
        folder = self.folder(address)
        try:
            return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return []

    def read(self, address: str, name: str) -> str:
        try:
            # the octets as written (read_text would turn CRLF into LF): GETSCRIPT returns them (RFC 5804 §2.9)
            return (self.folder(address) / (check_name(name) + SUFFIX)).read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ScriptNotFound(name) from None

    def write(self, address: str, name: str, text: str) -> None:
        """Store (or replace) a script; the caller has checked that it parses."""
        folder = self.folder(address)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _replace(folder, check_name(name) + SUFFIX, text.encode("utf-8"))

    def delete(self, address: str, name: str) -> None:
        try:
            (self.folder(address) / (check_name(name) + SUFFIX)).unlink()
        except FileNotFoundError:
            raise ScriptNotFound(name) from None
        fsync_dir(self.folder(address))

    def rename(self, address: str, old: str, new: str) -> None:
        folder = self.folder(address)
        source = folder / (check_name(old) + SUFFIX)
        if not source.exists():
            raise ScriptNotFound(old)
        was_active = self.active(address) == old
        os.rename(source, folder / (check_name(new) + SUFFIX))
        if was_active:
            _replace(folder, ACTIVE, check_name(new).encode("utf-8"))
        fsync_dir(folder)

    def active(self, address: str) -> str | None:
        """The active script's name, or None."""
        try:
            name = (self.folder(address) / ACTIVE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def activate(self, address: str, name: str | None) -> None:
        """Make ``name`` the active script; None deactivates (RFC 5804 §2.8 SETACTIVE "")."""
        folder = self.folder(address)
        if name is None:
            try:
                (folder / ACTIVE).unlink()
                fsync_dir(folder)
            except FileNotFoundError:
                pass
            return
        if not (folder / (check_name(name) + SUFFIX)).exists():
            raise ScriptNotFound(name)
        _replace(folder, ACTIVE, check_name(name).encode("utf-8"))

    def active_script(self, address: str) -> tuple[str, str] | None:
        """(name, text) of the user's active script, or None; what local delivery runs."""
        name = self.active(address)
        if name is None:
            return None
        try:
            return name, self.read(address, name)
        except (ScriptNotFound, ScriptNameError):
            return None

    def size(self, address: str) -> int:
        """Bytes of all the user's scripts (for the quota of ``sieve.max_total_size``)."""
        return sum(p.stat().st_size for p in self.folder(address).glob("*" + SUFFIX)) if self.folder(
            address).exists() else 0


def _replace(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, folder / name)
    fsync_dir(folder)
