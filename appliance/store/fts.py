"""Full-text search index of one account: SQLite FTS5 with the trigram tokenizer, beside the account's index.

IMAP SEARCH BODY/TEXT is a case-insensitive substring test (RFC 3501 §6.4.4). The trigram tokenizer indexes
every 3-character window of a text, and a phrase query matches windows at consecutive positions, so a phrase of
the needle's trigrams matches exactly the texts that contain the needle: substring matching from the index. The
text is case-folded here, before it is indexed (``str.casefold``, the scan's folding), and the tokenizer is
told to keep case (``case_sensitive 1``), so the index folds exactly as the scan does. Needles shorter than 3
characters have no trigram: ``MIN_NEEDLE``; the caller scans for those.

The text is what ``extract`` makes of a message, as Dovecot's FTS does: MIME parts decoded (base64,
quoted-printable), charsets converted (an unknown one: UTF-8 with replacement, never an error), text/html
stripped to its text, binary parts skipped, attachments' file names in the headers column with the top-level
header fields. The scan (``appliance.imap.search``) uses the same function, so both answer alike.

Where the index lives, and why: ``fts.sqlite`` beside ``mailfleet.sqlite``, not in it. The index is derived
data: it can be deleted and rebuilt at any time (a new ``FTS_VERSION``, a corrupt file, ``mailfleet fts
rebuild``) without touching the authoritative metadata; and its writes (a message's text, up to
``max_bytes``) stay out of the account's write transactions, which deliveries, flag changes and expunges queue
behind. Its entries are keyed by the message file's name (relative to the account), which never changes for a
message (MOVE keeps the file; COPY makes a new file). ``catch_up`` indexes every file the account lists and the
index lacks, and drops entries whose file the account no longer lists (expunged): the index is complete after
any crash, because what is missing is found by comparing the two lists, not remembered.

Answers: ``matching`` returns the entries whose text holds the needle; ``unsure`` the files the index cannot
answer for (text cut at ``max_bytes``, a file not indexed yet). The caller reads those and checks them itself.
"""

from __future__ import annotations

import contextlib
import email
import email.header
import email.message
import email.policy
import email.utils
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Protocol

from appliance.durable.sqlite import enable_wal, read_transaction, write_transaction

log = logging.getLogger("appliance.store.fts")

FTS_VERSION = 1  # PRAGMA user_version of fts.sqlite: a different one (a new extraction) rebuilds the index
FILE_NAME = "fts.sqlite"
DEFAULT_MAX_BYTES = 1024 * 1024
MIN_NEEDLE = 3  # the trigram tokenizer cannot look up shorter strings
BATCH = 200  # messages per write transaction while indexing: short holds of the index's write lock
# A search indexes at most this many missing messages before it answers (about a second); with more (an index
# deleted, a restored mailbox) it answers by reading them and the background indexer builds the index.
INLINE_INDEX = 500

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BLOCK_TAGS = frozenset({"br", "p", "div", "tr", "td", "th", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4",
                         "h5", "h6", "blockquote", "pre", "hr", "title", "section", "article", "header", "footer"})


@dataclass(frozen=True)
class FtsSettings:
    """``imap.full_text_search``, ``imap.fts_max_bytes`` and ``imap.fts_autoindex``, as the store and the IMAP
    server use them."""

    enabled: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    autoindex: bool = False  # index each delivery in the background (else: at the first search that needs it)


@dataclass(frozen=True, slots=True)
class Extract:
    """A message's searchable text, case-folded: the header fields (and attachment names), the body."""

    headers: str
    body: str
    truncated: bool = False


# ---------------------------------------------------------------------------------------------- extraction


def extract(data: bytes, max_bytes: int | None = None) -> Extract:
    """The searchable text of a message; ``max_bytes`` caps the text kept (UTF-8 bytes, headers and body
    together) and sets ``truncated`` when it cut something. Never raises: hostile input gives what could be
    read. Without a cap the whole text is returned; with one, a text that fits is exactly the uncapped one."""
    budget = max_bytes if max_bytes is not None else -1
    headers: list[str] = []
    body: list[str] = []
    truncated = False
    for column, piece in _pieces(data):
        joiner = 1 if column == "b" and body else 0  # the newline that joins body pieces
        if budget >= 0:
            cost = joiner + len(piece.encode("utf-8", "surrogatepass"))
            if cost > budget:
                keep = budget - joiner
                if keep > 0:
                    cut = piece.encode("utf-8", "surrogatepass")[:keep].decode("utf-8", "ignore")
                    (headers if column == "h" else body).append(cut)
                truncated = True
                break
            budget -= cost
        (headers if column == "h" else body).append(piece)
    return Extract("".join(headers), "\n".join(body), truncated)


def _pieces(data: bytes) -> Iterator[tuple[str, str]]:
    """("h", text) and ("b", text) pieces in a fixed order: top-level header fields, then each leaf part."""
    match = _HEADER_END.search(data)
    header = data[: match.start()] if match else data
    for name, value in _header_fields(header):
        yield "h", f"{name}: {_decode_words(value)}\n".casefold()
    try:
        parsed = email.message_from_bytes(data, policy=email.policy.compat32)
        parts = list(parsed.walk())
    except Exception:  # noqa: BLE001 - a message the parser cannot read is searched as its raw body
        if match:
            yield "b", data[match.end():].decode("utf-8", "replace").casefold()
        return
    for part in parts:
        if part.is_multipart():  # containers, message/rfc822 included: walk() visits their parts
            continue
        filename = _filename(part)
        if filename:
            yield "h", f"{filename}\n".casefold()
        text = _part_text(part)
        if text is not None:
            yield "b", text.casefold()


def _header_fields(header: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of each field; 8-bit bytes read as UTF-8 with replacement."""
    fields: list[tuple[str, str]] = []
    for line in header.decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep and name.strip():
            fields.append((name.strip(), value.strip()))
    return fields


def _decode_words(value: str) -> str:
    """RFC 2047 encoded-words decoded; anything undecodable is kept as written."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # noqa: BLE001 - unknown charsets, broken base64: best effort
        return value


def _filename(part: email.message.Message) -> str | None:
    name: object
    try:
        name = part.get_filename() or part.get_param("name")
    except Exception:  # noqa: BLE001
        return None
    if isinstance(name, tuple):  # an RFC 2231 value get_param did not collapse
        name = email.utils.collapse_rfc2231_value(name)
    return _decode_words(str(name)) if name else None


def _part_text(part: email.message.Message) -> str | None:
    """A leaf part's text, or None for binary parts (images, PDFs, ...): text/* and the message/* leaves
    (message/global-headers, ...) are read."""
    if part.get_content_maintype() not in ("text", "message"):
        return None
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(payload, bytes):
        return None
    text = _decode(payload, part.get_content_charset())
    if part.get_content_subtype() == "html":
        return html_text(text)
    return text


def _decode(payload: bytes, charset: str | None) -> str:
    """Bytes in the part's charset; an unknown or unusable one falls back to UTF-8 with replacement."""
    if charset:
        try:
            return payload.decode(charset, "replace")
        except Exception:  # noqa: BLE001 - LookupError, or a codec that is not a text encoding
            pass
    return payload.decode("utf-8", "replace")


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)


def html_text(html: str) -> str:
    """The text of an HTML part: tags, scripts and styles dropped, entities decoded, blocks on lines."""
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: BLE001 - HTMLParser is lenient; anything it still refuses stays as written
        return html
    return "".join(parser.out)


# ---------------------------------------------------------------------------------------------- the index


class FileLister(Protocol):
    """What the index needs of an account: the message files it lists (``Messages.all_files``)."""

    path: Path

    def all_files(self) -> list[str]: ...


class FtsIndex:
    """The FTS5 index of one account (``fts.sqlite`` in its directory); thread-safe, and safe beside other
    processes (WAL; an entry is inserted once, whoever indexes it first)."""

    def __init__(self, account_path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(account_path) / FILE_NAME
        self.root = str(account_path) + os.sep
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        """Open the index; one of another version, or one SQLite cannot read, is deleted and started anew."""
        try:
            return self._connect()
        except (sqlite3.DatabaseError, _StaleIndex) as exc:
            log.warning("%s: %s: rebuilding the full-text index", self.path, exc)
            self._delete_files()
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        try:
            db.execute("PRAGMA busy_timeout=60000")
            enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # derived data: a lost tail is re-indexed by catch_up
            with write_transaction(db):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                tables = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'docs'").fetchone()[0]
                if tables and version != FTS_VERSION:
                    raise _StaleIndex(f"index version {version}, this version reads {FTS_VERSION}")
                if not tables:
                    db.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, filename TEXT NOT NULL UNIQUE,"
                               " truncated INTEGER NOT NULL)")
                    db.execute("CREATE VIRTUAL TABLE text USING fts5(headers, body,"
                               " tokenize = 'trigram case_sensitive 1')")
                    db.execute(f"PRAGMA user_version = {FTS_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _delete_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ keeping it complete

    def catch_up(self, account: FileLister, wanted: Iterable[str] | None = None, limit: int | None = None) -> int:
        """Index the files the account lists and the index lacks (only those of ``wanted``, absolute paths,
        when given: the folder being searched), and drop entries of files the account no longer lists.
        More than ``limit`` missing: none is indexed (a search does not wait for a whole mailbox's index; it
        reads those messages and leaves the indexing to the background). Returns how many were indexed."""
        listed = set(account.all_files())
        with self._lock, read_transaction(self._db):
            known = dict(self._db.execute("SELECT filename, id FROM docs").fetchall())
        gone = [doc for name, doc in known.items() if name not in listed]
        if gone:
            self._forget(gone)
        if wanted is None:
            missing = sorted(listed.difference(known))
        else:
            missing = [rel for rel in (self._relative(f) for f in wanted) if rel in listed and rel not in known]
        if limit is not None and len(missing) > limit:
            return 0
        for start in range(0, len(missing), BATCH):
            self._index(missing[start : start + BATCH])
        return len(missing)

    def _relative(self, file: str) -> str:
        return file[len(self.root):] if file.startswith(self.root) else file

    def _index(self, names: list[str]) -> None:
        """Extract outside the lock, then insert in one transaction; a file gone meanwhile is skipped."""
        rows = []
        for name in names:
            try:
                with open(self.root + name, "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                continue
            rows.append((name, extract(data, self.max_bytes)))
        with self._lock, write_transaction(self._db) as db:
            for name, text in rows:
                # FTS5 reads a text only up to a NUL: such a text is left for the scan to check
                unsure = text.truncated or "\x00" in text.headers or "\x00" in text.body
                cursor = db.execute("INSERT OR IGNORE INTO docs(filename, truncated) VALUES(?, ?)",
                                    (name, int(unsure)))
                if not cursor.rowcount:
                    continue  # another session or process indexed it first
                try:
                    db.execute("INSERT INTO text(rowid, headers, body) VALUES(?, ?, ?)",
                               (cursor.lastrowid, text.headers, text.body))
                except UnicodeEncodeError:  # a lone surrogate: leave the text out, the scan checks this one
                    db.execute("UPDATE docs SET truncated = 1 WHERE id = ?", (cursor.lastrowid,))

    def _forget(self, ids: list[int]) -> None:
        with self._lock, write_transaction(self._db) as db:
            db.executemany("DELETE FROM text WHERE rowid = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM docs WHERE id = ?", [(i,) for i in ids])

    def rebuild(self, account: FileLister) -> int:
        """Drop every entry and index the account's messages again (``mailfleet fts rebuild``)."""
        with self._lock, write_transaction(self._db) as db:
            db.execute("DELETE FROM text")
            db.execute("DELETE FROM docs")
        return self.catch_up(account)

    # ------------------------------------------------------------------ answers

    def matching(self, needle: str, body_only: bool) -> set[str]:
        """Absolute paths of the indexed messages whose text (body, or headers and body) contains the
        case-folded ``needle`` (at least MIN_NEEDLE characters, no NUL)."""
        phrase = '"' + needle.replace('"', '""') + '"'
        query = f"body : {phrase}" if body_only else phrase
        with self._lock:
            rows = self._db.execute(
                "SELECT docs.filename FROM text JOIN docs ON docs.id = text.rowid WHERE text MATCH ?", (query,)
            ).fetchall()
        return {self.root + name for (name,) in rows}

    def unsure(self, files: Iterable[str]) -> set[str]:
        """Of ``files`` (absolute paths), those the index cannot answer for: not indexed, or cut short."""
        with self._lock, read_transaction(self._db):
            complete = {name for (name,) in self._db.execute("SELECT filename FROM docs WHERE truncated = 0")}
        return {f for f in files if self._relative(f) not in complete}

    def stats(self) -> tuple[int, int]:
        """(messages indexed, of which cut at max_bytes)."""
        with self._lock:
            return self._db.execute("SELECT count(*), total(truncated) FROM docs").fetchone()


class _StaleIndex(Exception):
    """fts.sqlite was written by another FTS_VERSION."""


_INDEXES: weakref.WeakKeyDictionary[object, FtsIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def index_for(account: FileLister, settings: FtsSettings) -> FtsIndex:
    """The process's index of ``account``, opened on first use and dropped with the account object."""
    with _INDEXES_LOCK:
        index = _INDEXES.get(account)
        if index is None or index.max_bytes != settings.max_bytes:
            index = _INDEXES[account] = FtsIndex(account.path, settings.max_bytes)
        return index


class Indexer:
    """Indexes newly delivered messages in the background, so that the first SEARCH BODY finds the index
    built. ``schedule`` is cheap (a dict insert); one daemon thread per process waits until deliveries pause
    for ``DELAY`` (at most ``MAX_DEFER`` after the first one waiting), then indexes each account touched in a
    child process (``python -m appliance.store.fts ACCOUNT MAX_BYTES``) that runs under SCHED_IDLE: it gets
    a CPU only when nothing else wants one, so indexing never slows the sessions that accept and deliver mail
    (a thread would: extracting text holds the GIL), and the index is ready moments after the stream of mail
    ends. Work left undone (the child or the process ends first) is not lost: the next search's ``catch_up``
    does it."""

    DELAY = 0.5  # seconds without a new delivery: a burst becomes one pass over the account
    MAX_DEFER = 30.0  # seconds: under a steady stream, start a pass at least this often
    CHILD_TIMEOUT = 3600.0  # seconds a pass may take (a large mailbox on a busy host), then it is stopped

    def __init__(self) -> None:
        self._pending: dict[int, tuple[FileLister, FtsSettings]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._last = 0.0  # monotonic time of the last schedule

    def schedule(self, account: FileLister, settings: FtsSettings) -> None:
        with self._cond:
            self._pending[id(account)] = (account, settings)
            self._last = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fts-indexer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, account: FileLister) -> None:
        """Drop pending work for an account being closed."""
        with self._cond:
            self._pending.pop(id(account), None)

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or running (tests and the benchmark); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _wait_for_a_pause(self) -> None:
        """Sleep until no delivery came for DELAY, or MAX_DEFER has passed."""
        give_up = time.monotonic() + self.MAX_DEFER
        while True:
            now = time.monotonic()
            quiet_at = self._last + self.DELAY
            if now >= quiet_at or now >= give_up:
                return
            time.sleep(min(quiet_at, give_up) - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                self._busy = True
            self._wait_for_a_pause()
            with self._cond:
                work, self._pending = list(self._pending.values()), {}
            for account, settings in work:
                try:
                    self._index_in_child(Path(account.path), settings.max_bytes)
                except Exception:  # noqa: BLE001 - the next search catches up; the thread must live on
                    log.exception("full-text indexing of %s failed", account.path)
            with self._cond:
                self._busy = bool(self._pending)
                self._cond.notify_all()

    def _index_in_child(self, account_path: Path, max_bytes: int) -> None:
        child = subprocess.Popen([sys.executable, "-m", "appliance.store.fts", str(account_path), str(max_bytes)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with contextlib.suppress(OSError, AttributeError):  # not Linux: a normal priority, still off the GIL
            os.sched_setscheduler(child.pid, os.SCHED_IDLE, os.sched_param(0))
        try:
            _, err = child.communicate(timeout=self.CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            log.warning("full-text indexing of %s stopped after %.0fs; the next search goes on with it",
                        account_path, self.CHILD_TIMEOUT)
            return
        if child.returncode != 0:
            log.warning("full-text indexing of %s failed (exit %s): %s", account_path, child.returncode,
                        err.decode("utf-8", "replace").strip().splitlines()[-1:] or "no message")


class _ListedFiles:
    """The account's message files as its index (``mailfleet.sqlite``) lists them, read-only: what the
    indexing child compares the full-text index with, without opening the account (and its recovery)."""

    def __init__(self, account_path: Path) -> None:
        self.path = account_path

    def all_files(self) -> list[str]:
        db = sqlite3.connect(f"file:{self.path / 'mailfleet.sqlite'}?mode=ro", uri=True, timeout=60)
        try:
            return [name for (name,) in db.execute("SELECT filename FROM messages")]
        finally:
            db.close()


def _child_main(argv: list[str]) -> int:
    """``python -m appliance.store.fts ACCOUNT_DIR MAX_BYTES``: index what the account's index lists and the
    full-text index lacks (the background pass of ``Indexer``)."""
    account_path, max_bytes = Path(argv[0]), int(argv[1])
    index = FtsIndex(account_path, max_bytes)
    try:
        index.catch_up(_ListedFiles(account_path))
    finally:
        index.close()
    return 0


INDEXER = Indexer()


def _after_fork_in_child() -> None:
    """A forked child (an SMTP acceptor) starts with no indexer thread, no lock held by a parent's thread, and
    no SQLite connection of its parent's (SQLite forbids using those across fork)."""
    global _INDEXES, _INDEXES_LOCK
    INDEXER.__init__()  # type: ignore[misc]
    _INDEXES = weakref.WeakKeyDictionary()
    _INDEXES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
