"""IMAP4rev1 command parser (RFC 3501 §9 grammar plus the extensions we announce).

Pure: ``parse_command(bytes)`` takes one complete command as received (literals inlined as
``{n}\\r\\n<n bytes>`` or ``{n+}\\r\\n<n bytes>``, final CRLF removed) and returns a typed command,
or raises ``ParseError`` whose ``reason`` goes into the ``BAD`` reply. It never does I/O, so it is
tested on its own with hypothesis; the session (``session.py``) holds the state.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from appliance.store import mutf7

# RFC 3501 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x00, 0x20)) | {0x7F}
ATOM_CHARS = frozenset(range(0x01, 0x80)) - _ATOM_SPECIALS
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ATOM_CHARS | {ord("%"), ord("*"), ord("]")}
TAG_CHARS = ASTRING_CHARS - {ord("+")}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MAX_NUMBER = 2**32 - 1  # RFC 3501 §9: number is an unsigned 32-bit integer
MAX_NUMBER64 = 2**63 - 1  # RFC 7162: mod-sequence-value
MAX_DEPTH = 64  # nesting of parenthesised search keys


class ParseError(Exception):
    """Malformed command: answered ``<tag> BAD <reason>`` (or ``* BAD`` when no tag could be read)."""

    def __init__(self, reason: str, tag: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tag = tag


@dataclass(frozen=True)
class SeqRange:
    """One range of a sequence-set; ``None`` stands for "*" (the largest number in use)."""

    start: int | None
    end: int | None


@dataclass(frozen=True)
class SequenceSet:
    ranges: tuple[SeqRange, ...]
    saved: bool = False  # "$": the saved search result (SEARCHRES, RFC 5182), replaced by the session

    def highest(self, largest: int) -> int:
        """The largest number the set names, with "*" = ``largest``."""
        return max(max(largest if r.start is None else r.start, largest if r.end is None else r.end)
                   for r in self.ranges)

    def resolve(self, largest: int) -> set[int]:
        """The numbers in the set that are <= ``largest``, with "*" = ``largest`` (RFC 3501 §9
        seq-range: order is irrelevant). Never expands beyond ``largest`` ("1:4294967295")."""
        out: set[int] = set()
        for r in self.ranges:
            a = largest if r.start is None else r.start
            b = largest if r.end is None else r.end
            lo, hi = min(a, b), min(max(a, b), largest)
            out.update(range(lo, hi + 1))
        return out

    def contains(self, n: int, largest: int) -> bool:
        for r in self.ranges:
            a = largest if r.start is None else r.start
            b = largest if r.end is None else r.end
            if min(a, b) <= n <= max(a, b):
                return True
        return False

    def resolve_within(self, present: list[int]) -> list[int]:
        """Members of the sorted ``present`` list in the set (UID sets: gaps are simply absent).

        Merged spans and binary search keep a 1,000-range set over 10,000 UIDs cheap."""
        if not present:
            return []
        largest = present[-1]
        spans = []
        for r in self.ranges:
            a = largest if r.start is None else r.start
            b = largest if r.end is None else r.end
            spans.append((min(a, b), max(a, b)))
        spans.sort()
        out: list[int] = []
        last = 0
        for lo, hi in spans:
            lo = max(lo, last + 1)
            if lo > hi:
                continue
            out += present[bisect.bisect_left(present, lo):bisect.bisect_right(present, hi)]
            last = hi
        return out


@dataclass(frozen=True)
class Section:
    """BODY[section]: ``parts`` (1.2.3), then ``text`` (HEADER, HEADER.FIELDS[.NOT], TEXT, MIME or None)."""

    parts: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()
    spec: str = ""  # the section as it is echoed in the response: "1.HEADER.FIELDS (FROM TO)"


@dataclass(frozen=True)
class FetchAtt:
    """One FETCH data item. ``name`` is upper-case: FLAGS, UID, BODY, BODYSTRUCTURE, RFC822.SIZE, ..."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False


@dataclass(frozen=True)
class Command:
    tag: str
    name: str


@dataclass(frozen=True)
class Login(Command):
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Authenticate(Command):
    mechanism: str
    initial: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Select(Command):
    """SELECT or EXAMINE, with the RFC 7162 parameters."""

    mailbox: str
    condstore: bool = False
    qresync: tuple[int, int, SequenceSet | None, tuple[SequenceSet, SequenceSet] | None] | None = None


@dataclass(frozen=True)
class MailboxCommand(Command):
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE."""

    mailbox: str
    use: tuple[str, ...] = ()  # CREATE (USE (...)) from RFC 6154 §3


@dataclass(frozen=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True)
class ListCommand(Command):
    """LIST or LSUB, with RFC 5258 selection and return options."""

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    extended: bool = False


@dataclass(frozen=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append(Command):
    mailbox: str
    flags: tuple[str, ...]
    date: datetime | None
    message: bytes = field(repr=False)
    more: tuple[AppendMessage, ...] = field(default=(), repr=False)  # MULTIAPPEND (RFC 3502 §6.3.11)
    binary: bool = False  # the first message came as literal8 (RFC 3516 §4.4)


@dataclass(frozen=True)
class AppendMessage:
    """One further message of a MULTIAPPEND: its flags, date and bytes."""

    flags: tuple[str, ...]
    date: datetime | None
    message: bytes = field(repr=False)
    binary: bool = False


@dataclass(frozen=True)
class Search(Command):
    uid: bool
    charset: str | None
    criteria: tuple  # ("AND", [keys]); see _search_key for node shapes
    returns: tuple[str, ...] | None = None  # ESEARCH RETURN (...) options, None without RETURN


@dataclass(frozen=True)
class Sort(Command):
    """SORT / UID SORT (RFC 5256 §3), with ESORT's RETURN options (RFC 5267 §3)."""

    uid: bool
    keys: tuple[tuple[str, bool], ...]  # (sort key, reversed)
    charset: str
    criteria: tuple
    returns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Thread(Command):
    """THREAD / UID THREAD (RFC 5256 §3): ``algorithm`` is ORDEREDSUBJECT or REFERENCES."""

    uid: bool
    algorithm: str
    charset: str
    criteria: tuple


@dataclass(frozen=True)
class Fetch(Command):
    uid: bool
    sequence: SequenceSet
    items: tuple[FetchAtt, ...]
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True)
class StoreCommand(Command):
    uid: bool
    sequence: SequenceSet
    mode: str  # "add", "remove", "replace"
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True)
class CopyMove(Command):
    """COPY or MOVE (RFC 6851), possibly UID."""

    uid: bool
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE with a set (RFC 4315 §2.1)."""

    uid: bool
    sequence: SequenceSet | None = None


@dataclass(frozen=True)
class IdCommand(Command):
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class QuotaCommand(Command):
    """GETQUOTA / GETQUOTAROOT / SETQUOTA (RFC 9208); ``target`` is the quota root or the mailbox."""

    target: str
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Enable(Command):
    capabilities: tuple[str, ...]


SIMPLE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE",
                    "NAMESPACE"})
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
SIMPLE_FETCH = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
                          "RFC822.TEXT", "BODYSTRUCTURE", "UID", "BODY", "MODSEQ"})
SIMPLE_FETCH |= {"EMAILID", "THREADID"}  # RFC 8474 §5
STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE"})
STATUS_ITEMS |= {"MAILBOXID"}  # RFC 8474 §4.3
STATUS_ITEMS |= {"DELETED"}  # RFC 9051 §6.3.11
SEARCH_NOARG = frozenset({"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
                          "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"})
SEARCH_STRING = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
SEARCH_DATE = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_DATE_TIME = re.compile(
    rb'"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"'
)


class Cursor:
    """Reads IMAP lexical elements from one command's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    # -- low level
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def expect(self, token: bytes, what: str) -> None:
        if not self.data.startswith(token, self.pos):
            raise ParseError(f"expected {what}")
        self.pos += len(token)

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise ParseError("expected a space" if not self.at_end() else "missing argument")
        self.pos += 1

    def maybe(self, token: bytes) -> bool:
        if self.data.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def maybe_ci(self, word: bytes) -> bool:
        end = self.pos + len(word)
        if self.data[self.pos:end].upper() == word.upper():
            self.pos = end
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected extra arguments")

    def take(self, chars: frozenset[int]) -> bytes:
        start = self.pos
        data = self.data
        n = len(data)
        while self.pos < n and data[self.pos] in chars:
            self.pos += 1
        return data[start:self.pos]

    # -- RFC 3501 §9 elements
    def atom(self, what: str = "atom") -> str:
        value = self.take(ATOM_CHARS)
        if not value:
            raise ParseError(f"expected {what}")
        return value.decode("ascii")

    def number(self, nonzero: bool = False, limit: int = MAX_NUMBER) -> int:
        digits = self.take(frozenset(b"0123456789"))
        if not digits:
            raise ParseError("expected a number")
        value = int(digits)
        if value > limit:
            raise ParseError("number out of range")
        if nonzero and value == 0:
            raise ParseError("expected a non-zero number")
        return value

    def quoted(self) -> bytes:
        self.expect(b'"', "a quoted string")
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise ParseError("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in (0x22, 0x5C):
                    raise ParseError("bad escape in quoted string (only \\\\ and \\\" allowed)")
                out.append(data[self.pos])
                self.pos += 1
            elif c in (0x0D, 0x0A, 0x00):
                raise ParseError("CR, LF or NUL in quoted string")
            else:
                out.append(c)

    def literal(self) -> bytes:
        match = re.compile(rb"\{(\d{1,10})(\+?)\}\r\n").match(self.data, self.pos)
        if not match:
            raise ParseError("malformed literal")
        size = int(match.group(1))
        start = match.end()
        if start + size > len(self.data):
            raise ParseError("literal shorter than announced")
        self.pos = start + size
        return self.data[start:self.pos]

    def literal8(self) -> bytes:
        """A literal, or an RFC 3516 §4.4 literal8 (``~{n}``), whose octets may include NUL."""
        self.maybe(b"~")
        return self.literal()

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise ParseError("expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        value = self.take(ASTRING_CHARS)
        if not value:
            raise ParseError("expected a string or atom")
        return value

    def nstring(self) -> bytes | None:
        if self.maybe_ci(b"NIL"):
            return None
        return self.string()

    def text_astring(self) -> str:
        raw = self.astring()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("string is not valid UTF-8") from None

    def mailbox(self) -> str:
        raw = self.astring()
        return _decode_mailbox(raw, allow_empty=True)  # the session answers NO [CANNOT] (as Dovecot)

    def list_mailbox(self) -> str:
        c = self.peek()
        if c in (0x22, 0x7B):
            raw = self.string()
        else:
            raw = self.take(LIST_CHARS)
            if not raw:
                raise ParseError("expected a mailbox pattern")
        return _decode_mailbox(raw, allow_empty=True)

    def sequence_set(self) -> SequenceSet:
        if self.maybe(b"$"):  # RFC 5182 §3
            return SequenceSet((), saved=True)
        ranges = []
        while True:
            start = self._seq_number()
            end = start
            if self.maybe(b":"):
                end = self._seq_number()
            ranges.append(SeqRange(start, end))
            if not self.maybe(b","):
                break
        return SequenceSet(tuple(ranges))

    def _seq_number(self) -> int | None:
        if self.maybe(b"*"):
            return None
        c = self.peek()
        if c is None or c not in b"0123456789":
            raise ParseError("invalid sequence set")
        return self.number(nonzero=True)

    def flag(self) -> str:
        if self.maybe(b"\\"):
            if self.maybe(b"*"):
                return "\\*"
            return "\\" + self.atom("flag name")
        return self.atom("flag")

    def flag_list(self) -> tuple[str, ...]:
        self.expect(b"(", "a flag list")
        flags = []
        if not self.maybe(b")"):
            while True:
                flags.append(self.flag())
                if self.maybe(b")"):
                    break
                self.sp()
        return tuple(flags)

    def date(self) -> datetime:
        quoted = self.maybe(b'"')
        match = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})").match(self.data, self.pos)
        if not match:
            raise ParseError("expected a date like 1-Feb-1994")
        self.pos = match.end()
        if quoted:
            self.expect(b'"', "closing quote of date")
        return _make_date(int(match.group(1)), match.group(2), int(match.group(3)))

    def date_time(self) -> datetime:
        match = _DATE_TIME.match(self.data, self.pos)
        if not match:
            raise ParseError('expected a date-time like "17-Jul-1996 02:44:25 -0700"')
        self.pos = match.end()
        day, mon, year, hh, mm, ss, sign, zh, zm = match.groups()
        base = _make_date(int(day.strip()), mon, int(year))
        if int(hh) > 23 or int(mm) > 59 or int(ss) > 60 or int(zm) > 59:
            raise ParseError("invalid time in date-time")
        offset = timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == b"-" else 1)
        return base.replace(hour=int(hh), minute=int(mm), second=min(int(ss), 59), tzinfo=timezone(offset))


def _make_date(day: int, month: bytes, year: int) -> datetime:
    try:
        mon = MONTHS.index(month.decode("ascii").lower()) + 1
        return datetime(year, mon, day)
    except ValueError:
        raise ParseError("invalid date") from None


class InvalidName(str):
    """A mailbox name that is not valid modified UTF-7 (RFC 3501 §5.1.3), kept as sent: no mailbox
    has it, so a LIST pattern of it matches literally (nothing, or itself), and a command naming
    it is answered NO by the session, as Dovecot does, not BAD (the command itself is well formed)."""


def _decode_mailbox(raw: bytes, allow_empty: bool = False) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        # RFC 3501 §5.1.3 wants modified UTF-7; accept raw UTF-8 like Dovecot does for robustness
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("mailbox name is neither modified UTF-7 nor UTF-8") from None
    if not text and not allow_empty:
        raise ParseError("empty mailbox name")
    try:
        return mutf7.decode(text)
    except mutf7.MUTF7Error:
        return InvalidName(text)


# ---------------------------------------------------------------------------------------- commands


def parse_tag(data: bytes) -> str | None:
    """The tag at the start of ``data`` (to answer BAD to a command that fails to parse), or None."""
    cur = Cursor(data)
    tag = cur.take(TAG_CHARS)
    return tag.decode("ascii") if tag else None


def parse_command(data: bytes) -> Command:
    """Parse one complete command (without its final CRLF)."""
    cur = Cursor(data)
    raw_tag = cur.take(TAG_CHARS)
    if not raw_tag:
        raise ParseError("missing or invalid tag")
    tag = raw_tag.decode("ascii")
    try:
        if cur.at_end():
            raise ParseError("missing command")
        cur.sp()
        name = cur.atom("command name").upper()
        uid = False
        if name == "UID":
            cur.sp()
            uid = True
            name = cur.atom("command name after UID").upper()
            if name not in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE", "SORT", "THREAD"):
                raise ParseError(f"UID {name} is not a valid command")
        command = _dispatch(cur, tag, name, uid)
        cur.end()
        return command
    except ParseError as exc:
        exc.tag = tag
        raise
    except (ValueError, OverflowError, RecursionError) as exc:
        raise ParseError(f"invalid arguments ({exc.__class__.__name__})", tag) from None


def _dispatch(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    if name in SIMPLE:
        return Command(tag, name)
    if name not in _HANDLERS:
        raise ParseError(f"unknown command {name[:40]}")
    handler = _HANDLERS[name]
    if name == "EXPUNGE":
        if uid:
            cur.sp()
            return Expunge(tag, name, True, cur.sequence_set())
        return Expunge(tag, name, False)
    if cur.at_end():
        raise ParseError(f"{name} needs arguments")
    cur.sp()
    assert handler is not None
    return handler(cur, tag, name, uid)


def _login(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    username = cur.text_astring()
    cur.sp()
    password = cur.text_astring()
    return Login(tag, name, username, password)


def _authenticate(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    mechanism = cur.atom("SASL mechanism").upper()
    initial = None
    if cur.maybe(b" "):  # RFC 4959 SASL-IR
        raw = cur.take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))
        if not raw:
            raise ParseError("invalid initial response")
        initial = raw.decode("ascii")
    return Authenticate(tag, name, mechanism, initial)


def _select(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    mailbox = cur.mailbox()
    condstore = False
    qresync = None
    if cur.maybe(b" "):
        cur.expect(b"(", "select parameters")
        while True:
            param = cur.atom("select parameter").upper()
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                cur.sp()
                qresync = _qresync_params(cur)
            else:
                raise ParseError(f"unknown SELECT parameter {param[:40]}")
            if cur.maybe(b")"):
                break
            cur.sp()
    return Select(tag, name, mailbox, condstore, qresync)


def _qresync_params(cur: Cursor) -> tuple:
    # RFC 7162 §3.2.5: (uidvalidity mod-sequence [known-uids] [(seq-match-data)])
    cur.expect(b"(", "QRESYNC parameters")
    validity = cur.number(nonzero=True)
    cur.sp()
    modseq = cur.number(nonzero=True, limit=MAX_NUMBER64)
    known = None
    match = None
    if cur.maybe(b" "):
        if cur.peek() != ord("("):
            known = cur.sequence_set()
            if cur.maybe(b" "):
                match = _seq_match(cur)
        else:
            match = _seq_match(cur)
    cur.expect(b")", "end of QRESYNC parameters")
    return (validity, modseq, known, match)


def _seq_match(cur: Cursor) -> tuple[SequenceSet, SequenceSet]:
    cur.expect(b"(", "sequence match data")
    seqs = cur.sequence_set()
    cur.sp()
    uids = cur.sequence_set()
    cur.expect(b")", "end of sequence match data")
    return (seqs, uids)


def _mailbox_only(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    mailbox = cur.mailbox()
    use: tuple[str, ...] = ()
    if name == "CREATE" and cur.maybe(b" "):
        cur.expect(b"(", "CREATE parameters")
        if not cur.maybe_ci(b"USE"):
            raise ParseError("unknown CREATE parameter")
        cur.sp()
        use = cur.flag_list()
        cur.expect(b")", "end of CREATE parameters")
    return MailboxCommand(tag, name, mailbox, use)


def _rename(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    old = cur.mailbox()
    cur.sp()
    new = cur.mailbox()
    return Rename(tag, name, old, new)


def _list(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    selection: set[str] = set()
    extended = False
    if name == "LIST" and cur.peek() == ord("("):  # RFC 5258 selection options
        extended = True
        cur.pos += 1
        if not cur.maybe(b")"):
            while True:
                selection.add(cur.atom("selection option").upper())
                if cur.maybe(b")"):
                    break
                cur.sp()
        cur.sp()
    reference = cur.list_mailbox() if cur.peek() != ord("(") else ""
    cur.sp()
    patterns: list[str] = []
    if name == "LIST" and cur.peek() == ord("("):
        extended = True
        cur.pos += 1
        while True:
            patterns.append(cur.list_mailbox())
            if cur.maybe(b")"):
                break
            cur.sp()
    else:
        patterns.append(cur.list_mailbox())
    returns: set[str] = set()
    if name == "LIST" and cur.maybe(b" "):
        if not cur.maybe_ci(b"RETURN"):
            raise ParseError("expected RETURN")
        extended = True
        cur.sp()
        cur.expect(b"(", "return options")
        if not cur.maybe(b")"):
            while True:
                option = cur.atom("return option").upper()
                if option == "STATUS":
                    cur.sp()
                    cur.expect(b"(", "status items")
                    items = _status_items(cur)
                    returns.update("STATUS:" + i for i in items)
                returns.add(option)
                if cur.maybe(b")"):
                    break
                cur.sp()
    return ListCommand(tag, name, reference, tuple(patterns), frozenset(selection), frozenset(returns),
                       extended)


def _status_items(cur: Cursor) -> list[str]:
    items = []
    while True:
        item = cur.atom("status item").upper()
        if item not in STATUS_ITEMS:
            raise ParseError(f"unknown STATUS item {item[:40]}")
        items.append(item)
        if cur.maybe(b")"):
            return items
        cur.sp()


def _status(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    mailbox = cur.mailbox()
    cur.sp()
    cur.expect(b"(", "status item list")
    return Status(tag, name, mailbox, tuple(_status_items(cur)))


def _append(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    mailbox = cur.mailbox()
    cur.sp()
    first = _append_message(cur)
    more = []
    while cur.maybe(b" "):  # RFC 3502 §6.3.11: append-message *(SP append-message)
        more.append(_append_message(cur))
    return Append(tag, name, mailbox, first.flags, first.date, first.message, tuple(more), first.binary)


def _append_message(cur: Cursor) -> AppendMessage:
    flags: tuple[str, ...] = ()
    date = None
    if cur.peek() == ord("("):
        flags = cur.flag_list()
        cur.sp()
    if cur.peek() == ord('"'):
        date = cur.date_time()
        cur.sp()
    if cur.maybe_ci(b"UTF8 ("):  # RFC 6855 §4: append-data =/ "UTF8" SP "(" literal8 ")"
        message = cur.literal8()
        cur.expect(b")", "')' closing UTF8 data")
        return AppendMessage(flags, date, message, True)
    binary = cur.peek() == ord("~")
    if cur.peek() not in (ord("{"), ord("~")):
        raise ParseError("APPEND needs the message as a literal")
    message = cur.literal8()
    return AppendMessage(flags, date, message, binary)


# -- SEARCH (RFC 3501 §6.4.4). Nodes: ("AND", [nodes]), ("OR", a, b), ("NOT", a), ("SEQ", set),
#    ("UID", set), (flag-key,), (string-key, bytes), ("HEADER", name, bytes), ("KEYWORD", kw),
#    ("LARGER", n), (date-key, datetime), ("MODSEQ", n)


def _search(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    charset = None
    returns = None
    if cur.maybe_ci(b"RETURN "):  # RFC 4731 ESEARCH
        cur.expect(b"(", "return options")
        opts = []
        if not cur.maybe(b")"):
            while True:
                opts.append(cur.atom("return option").upper())
                if cur.maybe(b")"):
                    break
                cur.sp()
        returns = tuple(opts)
        cur.sp()
    if cur.maybe_ci(b"CHARSET "):
        charset = cur.astring().decode("ascii", "replace")
        cur.sp()
    keys = [_search_key(cur, 0)]
    while cur.maybe(b" "):
        keys.append(_search_key(cur, 0))
    return Search(tag, name, uid, charset, ("AND", keys), returns)


def _search_key(cur: Cursor, depth: int) -> tuple:
    if depth > MAX_DEPTH:
        raise ParseError("search keys nested too deeply")
    c = cur.peek()
    if c == ord("("):
        cur.pos += 1
        keys = [_search_key(cur, depth + 1)]
        while not cur.maybe(b")"):
            cur.sp()
            keys.append(_search_key(cur, depth + 1))
        return ("AND", keys)
    if c is not None and (c in b"0123456789" or c in b"*$"):
        return ("SEQ", cur.sequence_set())
    key = cur.atom("search key").upper()
    if key in SEARCH_NOARG:
        return (key,)
    if key in SEARCH_STRING:
        cur.sp()
        return (key, cur.astring())
    if key in SEARCH_DATE:
        cur.sp()
        return (key, cur.date())
    if key in ("KEYWORD", "UNKEYWORD"):
        cur.sp()
        return (key, cur.atom("keyword"))
    if key in ("LARGER", "SMALLER"):
        cur.sp()
        return (key, cur.number())
    if key == "HEADER":
        cur.sp()
        field_name = cur.astring().decode("ascii", "replace")
        cur.sp()
        return (key, field_name, cur.astring())
    if key == "UID":
        cur.sp()
        return ("UID", cur.sequence_set())
    if key == "NOT":
        cur.sp()
        return ("NOT", _search_key(cur, depth + 1))
    if key == "OR":
        cur.sp()
        first = _search_key(cur, depth + 1)
        cur.sp()
        return ("OR", first, _search_key(cur, depth + 1))
    if key == "MODSEQ":  # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type] value
        cur.sp()
        if cur.peek() == ord('"'):
            cur.quoted()
            cur.sp()
            entry_type = cur.atom("entry type").lower()
            if entry_type not in ("priv", "shared", "all"):
                raise ParseError("invalid MODSEQ entry type")
            cur.sp()
        return ("MODSEQ", cur.number(limit=MAX_NUMBER64))
    raise ParseError(f"unknown search key {key[:40]}")


# -- SORT and THREAD (RFC 5256 §3; RFC 5957 DISPLAYFROM/DISPLAYTO; RFC 5267 ESORT)

SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
ESORT_RETURNS = frozenset({"MIN", "MAX", "ALL", "COUNT"})
THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})


def _criteria_after_charset(cur: Cursor) -> tuple[str, tuple]:
    """search-charset 1*(SP search-key): the charset is mandatory in SORT and THREAD."""
    charset = cur.astring().decode("ascii", "replace")
    keys = []
    while cur.maybe(b" "):
        keys.append(_search_key(cur, 0))
    if not keys:
        raise ParseError("missing search criteria")
    return charset, ("AND", keys)


def _sort(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    returns = None
    if cur.maybe_ci(b"RETURN "):
        cur.expect(b"(", "return options")
        opts: list[str] = []
        while not cur.maybe(b")"):
            if opts:
                cur.sp()
            option = cur.atom("return option").upper()
            if option not in ESORT_RETURNS:
                raise ParseError(f"unknown SORT return option {option[:40]}")
            opts.append(option)
        returns = tuple(opts)
        cur.sp()
    cur.expect(b"(", "sort criteria")
    keys: list[tuple[str, bool]] = []
    while True:
        reverse = cur.maybe_ci(b"REVERSE ")
        key = cur.atom("sort key").upper()
        if key not in SORT_KEYS:
            raise ParseError(f"unknown sort key {key[:40]}")
        keys.append((key, reverse))
        if cur.maybe(b")"):
            break
        cur.sp()
    cur.sp()
    charset, criteria = _criteria_after_charset(cur)
    return Sort(tag, name, uid, tuple(keys), charset, criteria, returns)


def _thread(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    algorithm = cur.atom("thread algorithm").upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise ParseError(f"unknown thread algorithm {algorithm[:40]}")
    cur.sp()
    charset, criteria = _criteria_after_charset(cur)
    return Thread(tag, name, uid, algorithm, charset, criteria)


# -- FETCH (RFC 3501 §6.4.5)


def _fetch(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    sequence = cur.sequence_set()
    cur.sp()
    items: list[FetchAtt] = []
    if cur.peek() == ord("("):
        cur.pos += 1
        while True:
            items.append(_fetch_att(cur))
            if cur.maybe(b")"):
                break
            cur.sp()
    else:
        save = cur.pos
        word = cur.atom("fetch item").upper()
        if word in MACROS:
            items = [FetchAtt(n) for n in MACROS[word]]
        else:
            cur.pos = save
            items.append(_fetch_att(cur))
    changed_since = None
    vanished = False
    if cur.maybe(b" "):  # RFC 7162 §3.1.4 / §3.2.6 modifiers
        cur.expect(b"(", "fetch modifiers")
        while True:
            modifier = cur.atom("fetch modifier").upper()
            if modifier == "CHANGEDSINCE":
                cur.sp()
                changed_since = cur.number(limit=MAX_NUMBER64)
            elif modifier == "VANISHED":
                vanished = True
            else:
                raise ParseError(f"unknown FETCH modifier {modifier[:40]}")
            if cur.maybe(b")"):
                break
            cur.sp()
        if vanished and changed_since is None:
            raise ParseError("VANISHED needs CHANGEDSINCE")
    return Fetch(tag, name, uid, sequence, tuple(items), changed_since, vanished)


def _fetch_att(cur: Cursor) -> FetchAtt:
    word = cur.take(ATOM_CHARS - {ord("["), ord("<")}).decode("ascii").upper()
    if word in ("BODY", "BODY.PEEK") and cur.peek() == ord("["):
        section = _section(cur)
        partial = None
        if cur.peek() == ord("<"):
            cur.pos += 1
            start = cur.number()
            cur.expect(b".", "'.' in partial")
            length = cur.number(nonzero=True)
            cur.expect(b">", "'>' closing partial")
            partial = (start, length)
        return FetchAtt("BODY", section, partial, word.endswith(".PEEK"))
    if word in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and cur.peek() == ord("["):
        return _binary_att(cur, word)
    if word == "PREVIEW":
        return _preview_att(cur)
    if word in SIMPLE_FETCH:
        return FetchAtt(word)
    if not word:
        raise ParseError("expected a fetch item")
    raise ParseError(f"unknown fetch item {word[:40]}")


def _binary_att(cur: Cursor, word: str) -> FetchAtt:
    """RFC 3516 §6: BINARY[.PEEK][section-binary][<partial>] and BINARY.SIZE[section-binary], where
    section-binary holds part numbers only."""
    cur.expect(b"[", "'['")
    parts: list[int] = []
    while (c := cur.peek()) is not None and c in b"0123456789":
        parts.append(cur.number(nonzero=True))
        if not cur.maybe(b"."):
            break
    if parts and cur.data[cur.pos - 1] == ord("."):
        raise ParseError("invalid section")
    cur.expect(b"]", "']' (BINARY takes part numbers only)")
    section = Section(tuple(parts), None, (), ".".join(str(p) for p in parts))
    partial = None
    if word != "BINARY.SIZE" and cur.peek() == ord("<"):
        cur.pos += 1
        start = cur.number()
        cur.expect(b".", "'.' in partial")
        length = cur.number(nonzero=True)
        cur.expect(b">", "'>' closing partial")
        partial = (start, length)
    name = "BINARY.SIZE" if word == "BINARY.SIZE" else "BINARY"
    return FetchAtt(name, section, partial, word == "BINARY.PEEK")


def _preview_att(cur: Cursor) -> FetchAtt:
    """RFC 8970 §4: PREVIEW [SP "(" preview-mod *(SP preview-mod) ")"], preview-mod = "LAZY". A "("
    that does not start with LAZY belongs to the FETCH modifiers (CHANGEDSINCE) and is left alone."""
    save = cur.pos
    if cur.maybe(b" (") and cur.maybe_ci(b"LAZY"):
        while cur.maybe(b" "):
            if not cur.maybe_ci(b"LAZY"):
                raise ParseError("unknown PREVIEW modifier")
        cur.expect(b")", "')' closing PREVIEW modifiers")
        return FetchAtt("PREVIEW", peek=True)  # peek: LAZY
    cur.pos = save
    return FetchAtt("PREVIEW")


def _section(cur: Cursor) -> Section:
    cur.expect(b"[", "'['")
    start = cur.pos
    parts: list[int] = []
    text = None
    fields: list[str] = []
    while (c := cur.peek()) is not None and c in b"0123456789":
        parts.append(cur.number(nonzero=True))
        if not cur.maybe(b"."):
            break
    if cur.peek() != ord("]"):
        word = cur.take(ATOM_CHARS - {ord("["), ord("]")}).decode("ascii").upper()
        if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            cur.sp()
            cur.expect(b"(", "header field list")
            while True:
                fields.append(cur.astring().decode("ascii", "replace"))
                if cur.maybe(b")"):
                    break
                cur.sp()
        elif word == "MIME" and not parts:
            raise ParseError("MIME needs a part number")
        elif word not in ("HEADER", "TEXT", "MIME"):
            raise ParseError("invalid section")
        text = word
    elif parts and cur.data[cur.pos - 1] == ord("."):
        raise ParseError("invalid section")
    spec = cur.data[start:cur.pos].decode("ascii", "replace")
    cur.expect(b"]", "']'")
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        prefix = ".".join(str(p) for p in parts)
        spec = (prefix + "." if prefix else "") + text + " (" + " ".join(fields) + ")"
    elif text:
        prefix = ".".join(str(p) for p in parts)
        spec = (prefix + "." if prefix else "") + text
    return Section(tuple(parts), text, tuple(fields), spec)


# -- STORE (RFC 3501 §6.4.6), COPY / MOVE


def _store(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    sequence = cur.sequence_set()
    cur.sp()
    unchanged_since = None
    if cur.maybe(b"("):  # RFC 7162 §3.1.3
        if not cur.maybe_ci(b"UNCHANGEDSINCE "):
            raise ParseError("unknown STORE modifier")
        unchanged_since = cur.number(limit=MAX_NUMBER64)
        cur.expect(b")", "')' after UNCHANGEDSINCE")
        cur.sp()
    mode = "replace"
    if cur.maybe(b"+"):
        mode = "add"
    elif cur.maybe(b"-"):
        mode = "remove"
    if not cur.maybe_ci(b"FLAGS"):
        raise ParseError("expected FLAGS, +FLAGS or -FLAGS")
    silent = cur.maybe_ci(b".SILENT")
    cur.sp()
    if cur.peek() == ord("("):
        flags = cur.flag_list()
    else:
        flags_list = [cur.flag()]
        while cur.maybe(b" "):
            flags_list.append(cur.flag())
        flags = tuple(flags_list)
    if "\\*" in flags:
        raise ParseError("\\* is not a flag")
    return StoreCommand(tag, name, uid, sequence, mode, silent, flags, unchanged_since)


def _copy(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    sequence = cur.sequence_set()
    cur.sp()
    return CopyMove(tag, name, uid, sequence, cur.mailbox())


def _id(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    if cur.maybe_ci(b"NIL"):
        return IdCommand(tag, name, None)
    cur.expect(b"(", "ID parameter list or NIL")
    params = []
    if not cur.maybe(b")"):
        while True:
            key = cur.string().decode("utf-8", "replace")
            cur.sp()
            value = cur.nstring()
            params.append((key, value.decode("utf-8", "replace") if value is not None else None))
            if cur.maybe(b")"):
                break
            cur.sp()
    if len(params) > 30:  # RFC 2971 §3.3
        raise ParseError("too many ID parameters")
    return IdCommand(tag, name, tuple(params))


def _quota(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    if name == "GETQUOTAROOT":
        return QuotaCommand(tag, name, cur.mailbox())
    root = cur.text_astring()
    limits: list[tuple[str, int]] = []
    if name == "SETQUOTA":
        cur.sp()
        cur.expect(b"(", "resource limit list")
        if not cur.maybe(b")"):
            while True:
                resource = cur.atom("resource name").upper()
                cur.sp()
                limits.append((resource, cur.number(limit=MAX_NUMBER64)))
                if cur.maybe(b")"):
                    break
                cur.sp()
    return QuotaCommand(tag, name, root, tuple(limits))


def _enable(cur: Cursor, tag: str, name: str, uid: bool) -> Command:
    caps = [cur.atom("capability").upper()]
    while cur.maybe(b" "):
        caps.append(cur.atom("capability").upper())
    return Enable(tag, name, tuple(caps))


_HANDLERS = {
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _mailbox_only,
    "DELETE": _mailbox_only,
    "SUBSCRIBE": _mailbox_only,
    "UNSUBSCRIBE": _mailbox_only,
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _list,
    "STATUS": _status,
    "APPEND": _append,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "EXPUNGE": None,
    "ID": _id,
    "ENABLE": _enable,
    "GETQUOTA": _quota,
    "GETQUOTAROOT": _quota,
    "SETQUOTA": _quota,
    "SORT": _sort,
    "THREAD": _thread,
}
