"""Import of existing mail (Dovecot/Postfix Maildirs, mbox files) into the store, keeping flags and dates."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from appliance.store import mutf7
from appliance.store.account import Account
from appliance.store.errors import FolderExists
from appliance.store.maildir import parse_info_flags
from appliance.store.mailstore import MailStore

Progress = Callable[[int, int], None]  # (done, total)


class SourceError(Exception):
    """The source cannot be imported (not a Maildir, unreadable mbox); the message names it."""


@dataclass
class ImportSummary:
    messages: int = 0
    bytes: int = 0
    folders: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SourceMessage:
    folder: str
    flags: tuple[str, ...]
    internal_date: datetime
    read: Callable[[], bytes]
    origin: str


def crlf(data: bytes) -> bytes:
    """IMAP serves CRLF line ends (RFC 3501 §2.2); Maildirs and mbox files usually hold bare LF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# ------------------------------------------------------------------------------------- Maildir


def _maildir_folders(root: Path) -> list[tuple[str, Path]]:
    """(folder name, directory) for the INBOX and every Maildir++ (".A.B") or fs-layout sub-folder."""
    if not all((root / sub).is_dir() for sub in ("cur", "new")):
        raise SourceError(f"{root}: not a Maildir (no cur/ and new/ directories)")
    found = [("INBOX", root)]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name in ("cur", "new", "tmp"):
            continue
        path = Path(entry.path)
        if entry.name.startswith(".") and entry.name not in (".", ".."):
            if (path / "cur").is_dir():
                found.append((_decode_folder(entry.name[1:].replace(".", "/")), path))
        elif (path / "cur").is_dir():  # LAYOUT=fs
            found += [(name, p) for name, p in _fs_folders(path, entry.name)]
    return found


def _fs_folders(path: Path, name: str) -> Iterator[tuple[str, Path]]:
    yield _decode_folder(name), path
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir() and entry.name not in ("cur", "new", "tmp") and (Path(entry.path) / "cur").is_dir():
            yield from _fs_folders(Path(entry.path), f"{name}/{entry.name}")


def _decode_folder(name: str) -> str:
    try:
        return mutf7.decode(name)  # Dovecot keeps folder names in modified UTF-7 on disk
    except mutf7.MUTF7Error:
        return name


def _dovecot_keywords(folder: Path) -> dict[str, str]:
    """Maildir keyword letters (a-z) -> names, from Dovecot's dovecot-keywords file."""
    path = folder / "dovecot-keywords"
    mapping: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            index, _, name = line.partition(" ")
            if index.isdigit() and int(index) < 26 and name:
                mapping[chr(ord("a") + int(index))] = name
    return mapping


def _dovecot_order(folder: Path) -> dict[str, int]:
    """Base file name -> Dovecot UID, so that imported messages keep their order."""
    path = folder / "dovecot-uidlist"
    order: dict[str, int] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines()[1:]:
            uid, _, rest = line.partition(" ")
            name = rest.partition(":")[2] if ":" in rest else rest  # "<uid> [W.. S..] :<base name>"
            if uid.isdigit():
                order[name.strip()] = int(uid)
    return order


def maildir_messages(root: Path) -> list[SourceMessage]:
    """Every message of a Maildir tree, in delivery order per folder."""
    messages: list[SourceMessage] = []
    for folder, path in _maildir_folders(root):
        keywords = _dovecot_keywords(path)
        order = _dovecot_order(path)
        entries: list[tuple[tuple, SourceMessage]] = []
        for sub in ("new", "cur"):
            for entry in os.scandir(path / sub):
                if not entry.is_file() or entry.name.startswith("."):
                    continue
                stat = entry.stat()
                flags = list(parse_info_flags(entry.name)) if sub == "cur" else []
                info = entry.name.rpartition(":2,")[2] if ":2," in entry.name else ""
                flags += [keywords[c] for c in info if c in keywords]
                base = entry.name.split(":", 1)[0]
                key = (order.get(base, 1 << 62), stat.st_mtime, entry.name)
                when = datetime.fromtimestamp(stat.st_mtime, UTC)
                entries.append((key, SourceMessage(folder, tuple(flags), when,
                                                   functools.partial(Path(entry.path).read_bytes), entry.path)))
        messages += [m for _, m in sorted(entries, key=lambda e: e[0])]
    return messages


# ---------------------------------------------------------------------------------------- mbox

_FROM_LINE = re.compile(rb"^From (\S+)\s+(.*)$")
_ESCAPED_FROM = re.compile(rb"^>(>*From )", re.M)
_STATUS_HEADERS = re.compile(rb"^(status|x-status|x-keywords|x-uid|content-length):", re.I)


def _from_line_date(rest: bytes) -> datetime | None:
    text = rest.decode("ascii", "replace").strip()
    for fmt in ("%a %b %d %H:%M:%S %Y", "%a %b %d %H:%M %Y"):
        try:
            return datetime.strptime(" ".join(text.split()[:5]), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _is_from_line(line: bytes) -> bool:
    """A separator is "From <sender> <asctime date>"; an unescaped "From here..." in a body is not."""
    match = _FROM_LINE.match(line.rstrip(b"\r\n"))
    return match is not None and _from_line_date(match.group(2)) is not None


def _mbox_chunks(path: Path) -> Iterator[tuple[bytes, list[bytes]]]:
    """(From_ line, message lines) per message; a From_ line starts a message only after a blank line."""
    with open(path, "rb") as handle:
        first = handle.readline()
        if not first.startswith(b"From "):
            raise SourceError(f"{path}: not an mbox file (does not start with a 'From ' line)")
        from_line = first
        lines: list[bytes] = []
        previous_blank = False
        for line in handle:
            if line.startswith(b"From ") and previous_blank and _is_from_line(line):
                if lines and lines[-1].strip() == b"":
                    lines.pop()  # the separator blank line belongs to the mbox, not the message
                yield from_line, lines
                from_line, lines = line, []
                previous_blank = False
                continue
            lines.append(line)
            previous_blank = line.strip() == b""
        if lines and lines[-1].strip() == b"":
            lines.pop()
        yield from_line, lines


def _mbox_flags(header_lines: list[bytes]) -> list[str]:
    flags: list[str] = []
    for line in header_lines:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        value = value.strip()
        if key == b"status" and b"R" in value:
            flags.append("\\Seen")
        elif key == b"x-status":
            mapping = {b"A": "\\Answered", b"F": "\\Flagged", b"T": "\\Draft", b"D": "\\Deleted"}
            flags += [flag for letter, flag in mapping.items() if letter in value]
        elif key == b"x-keywords":
            flags += [k.decode() for k in re.split(rb"[\s,]+", value.decode("utf-8", "replace").encode()) if k]
    return flags


def mbox_messages(path: Path, folder: str) -> Iterator[SourceMessage]:
    """Messages of an mbox file (mboxo/mboxrd: one '>' removed from '>From ' lines)."""
    for index, (from_line, lines) in enumerate(_mbox_chunks(path), start=1):
        raw = b"".join(lines)
        header_end = raw.find(b"\n\n")
        header = raw if header_end < 0 else raw[:header_end + 1]
        body = b"" if header_end < 0 else raw[header_end + 1:]
        header_lines = header.splitlines(keepends=True)
        flags = _mbox_flags(header_lines)
        kept = b"".join(line for line in header_lines if not _STATUS_HEADERS.match(line))
        data = kept + _ESCAPED_FROM.sub(rb"\1", body)
        match = _FROM_LINE.match(from_line.rstrip(b"\r\n"))
        when = _from_line_date(match.group(2)) if match else None
        if when is None:
            when = _header_date(header) or datetime.now(UTC)
        yield SourceMessage(folder, tuple(flags), when, functools.partial(bytes, data), f"{path}#{index}")


def _header_date(header: bytes) -> datetime | None:
    match = re.search(rb"^Date:[ \t]*(.+)$", header, re.M | re.I)
    if not match:
        return None
    try:
        return parsedate_to_datetime(match.group(1).decode("ascii", "replace").strip())
    except (TypeError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------------- importing


def count_mbox_messages(path: Path) -> int:
    """Messages in an mbox file, read as a stream (for the progress bar of a multi-GB import)."""
    count = 0
    previous_blank = True
    with open(path, "rb") as handle:
        for line in handle:
            if line.startswith(b"From ") and previous_blank and _is_from_line(line):
                count += 1
            previous_blank = line.strip() == b""
    return count


def import_messages(store: MailStore, address: str, messages: Iterable[SourceMessage], total: int,
                    progress: Progress | None = None) -> ImportSummary:
    """Deliver every message (durably, as any delivery); raises QuotaExceeded when the account is full.

    ``messages`` may be a generator (an mbox is streamed, never held in memory at once)."""
    account: Account = store.account(address)
    existing = {f.name for f in account.folders()}
    summary = ImportSummary()
    for done, msg in enumerate(messages, start=1):
        if msg.folder not in existing:
            try:
                account.create_folder(msg.folder)
            except FolderExists:
                pass
            existing = {f.name for f in account.folders()}
        try:
            data = crlf(msg.read())
        except OSError as exc:
            summary.skipped.append(f"{msg.origin}: {exc.strerror or exc}")
            continue
        if not data.strip():
            summary.skipped.append(f"{msg.origin}: empty message")
            continue
        account.deliver(msg.folder, data, msg.flags, msg.internal_date)
        summary.messages += 1
        summary.bytes += len(data)
        summary.folders[msg.folder] = summary.folders.get(msg.folder, 0) + 1
        if progress is not None:
            progress(done, total)
    return summary
