"""Evaluation of SEARCH criteria (RFC 3501 §6.4.4) against one message."""

from __future__ import annotations

import codecs
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from appliance.imap.message import Message, cached_address_text, cached_decoded_header
from appliance.store import MessageInfo, fts

log = logging.getLogger("appliance.imap")

SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")


class BadCharset(Exception):
    """Unknown CHARSET: answered NO [BADCHARSET (...)] (RFC 3501 §6.4.4)."""


def check_charset(charset: str | None) -> str:
    """The Python codec for the SEARCH CHARSET; any codec Python knows is accepted."""
    if charset is None:
        return "utf-8"
    try:
        return codecs.lookup(charset).name
    except LookupError:
        raise BadCharset(charset) from None


@dataclass
class Candidate:
    """What the evaluator knows about one message; the body is loaded only when a key needs it."""

    seq: int
    info: MessageInfo
    recent: bool
    largest_seq: int
    largest_uid: int
    load: Callable[[], Message]
    _message: Message | None = field(default=None)
    # the full-text index's answers, by id() of the BODY/TEXT node they answer (see fts_answers)
    answers: Mapping[int, FtsAnswer] | None = None
    _text: fts.Extract | None = field(default=None)

    @property
    def message(self) -> Message:
        if self._message is None:
            self._message = self.load()
        return self._message

    @property
    def text(self) -> fts.Extract:
        """The searchable text, extracted as the full-text index extracts it, so that both answer alike."""
        if self._text is None:
            self._text = fts.extract(self.message.data)
        return self._text


@dataclass(frozen=True)
class FtsAnswer:
    """The index's answer to one BODY/TEXT key: the messages whose indexed text holds the string, and those
    it cannot answer for (text cut at imap.fts_max_bytes, not indexed yet), which are read and checked."""

    hits: frozenset[str]
    unsure: frozenset[str]


@functools.lru_cache(maxsize=256)
def _text(value: bytes, codec: str) -> str:
    """A search string in the command's charset, case-folded (computed once per SEARCH, not per message)."""
    return value.decode(codec, "replace").casefold()


def _sent_date(c: Candidate) -> date:
    """The Date: header's date; a message without (valid) Date: counts as sent at the epoch, as Dovecot."""
    sent = c.message.sent_date()
    return sent.date() if sent is not None else date(1970, 1, 1)


FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False),
}


def matches(node: tuple, c: Candidate, codec: str) -> bool:
    """True when the message satisfies the criteria tree built by the parser."""
    key = node[0]
    if key == "AND":
        return all(matches(sub, c, codec) for sub in node[1])
    if key == "OR":
        return matches(node[1], c, codec) or matches(node[2], c, codec)
    if key == "NOT":
        return not matches(node[1], c, codec)
    if key == "ALL":
        return True
    if key in FLAG_KEYS:
        flag, wanted = FLAG_KEYS[key]
        return (flag in c.info.flags) == wanted
    if key == "RECENT":
        return c.recent
    if key == "NEW":
        return c.recent and "\\Seen" not in c.info.flags
    if key == "OLD":
        return not c.recent
    if key == "KEYWORD":
        return node[1] in c.info.flags
    if key == "UNKEYWORD":
        return node[1] not in c.info.flags
    if key == "SEQ":
        return node[1].contains(c.seq, c.largest_seq)
    if key == "UID":
        return node[1].contains(c.info.uid, c.largest_uid)
    if key == "LARGER":
        return c.info.size > node[1]
    if key == "SMALLER":
        return c.info.size < node[1]
    if key == "MODSEQ":
        return c.info.modseq >= node[1]
    if key in ("BEFORE", "ON", "SINCE"):
        # RFC 3501: internal date, disregarding time and timezone
        return _compare(key, c.info.internal_date.date(), node[1].date())
    if key in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _compare(key[4:], _sent_date(c), node[1].date())
    if key == "SUBJECT":
        needle = _text(node[1], codec)
        return any(needle in v for v in cached_decoded_header(c.info.file, "subject"))
    if key in ("FROM", "TO", "CC", "BCC"):
        needle = _text(node[1], codec)
        return any(needle in v for v in cached_address_text(c.info.file, key.lower()))
    if key == "HEADER":
        needle = _text(node[2], codec)
        values = cached_decoded_header(c.info.file, node[1].lower())
        if not needle:
            return bool(values) or node[1].lower() in {k for k, _ in c.message.top.fields}
        return any(needle in v for v in values)
    if key in ("BODY", "TEXT"):
        answer = c.answers.get(id(node)) if c.answers else None
        if answer is not None and c.info.file not in answer.unsure:
            return c.info.file in answer.hits
        needle = _text(node[1], codec)
        return needle in c.text.body or (key == "TEXT" and needle in c.text.headers)
    raise ValueError(f"unknown search key {key}")


def _compare(op: str, value: date, target: date) -> bool:
    if op == "BEFORE":
        return value < target
    if op == "ON":
        return value == target
    return value >= target


def needs_message(node: tuple) -> bool:
    key = node[0]
    if key == "AND":
        return any(needs_message(n) for n in node[1])
    if key == "OR":
        return needs_message(node[1]) or needs_message(node[2])
    if key == "NOT":
        return needs_message(node[1])
    return key in ("FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER", "BODY", "TEXT", "SENTBEFORE", "SENTON",
                   "SENTSINCE")


def uses_modseq(node: tuple) -> bool:
    key = node[0]
    if key == "AND":
        return any(uses_modseq(n) for n in node[1])
    if key == "OR":
        return uses_modseq(node[1]) or uses_modseq(node[2])
    if key == "NOT":
        return uses_modseq(node[1])
    return key == "MODSEQ"


def needs_text(node: tuple) -> bool:
    """True when a key looks at the body (BODY, TEXT), so the whole file must be read."""
    key = node[0]
    if key == "AND":
        return any(needs_text(n) for n in node[1])
    if key == "OR":
        return needs_text(node[1]) or needs_text(node[2])
    if key == "NOT":
        return needs_text(node[1])
    return key in ("BODY", "TEXT")


def text_keys(node: tuple) -> Iterator[tuple]:
    """The BODY and TEXT keys of a criteria tree, wherever they are (under NOT and OR too)."""
    key = node[0]
    if key == "AND":
        for sub in node[1]:
            yield from text_keys(sub)
    elif key == "OR":
        yield from text_keys(node[1])
        yield from text_keys(node[2])
    elif key == "NOT":
        yield from text_keys(node[1])
    elif key in ("BODY", "TEXT"):
        yield node


def fts_answers(criteria: tuple, index: fts.FtsIndex, account: fts.FileLister, infos: Sequence[MessageInfo],
                codec: str) -> dict[int, FtsAnswer]:
    """Answer the BODY/TEXT keys from the full-text index, after indexing what it lacks of ``infos`` (the
    searched folder). Keys the index cannot look up (shorter than fts.MIN_NEEDLE, or with a NUL) get no answer:
    they are scanned. Blocking (SQLite, and reading the messages not indexed yet): run it in a thread."""
    keys = [node for node in text_keys(criteria)
            if len(needle := _text(node[1], codec)) >= fts.MIN_NEEDLE and "\x00" not in needle]
    if not keys:
        return {}
    files = [info.file for info in infos]
    index.catch_up(account, files, limit=fts.INLINE_INDEX)
    unsure = frozenset(index.unsure(files))
    return {id(node): FtsAnswer(frozenset(index.matching(_text(node[1], codec), node[0] == "BODY")), unsure)
            for node in keys}


def index_answers(criteria: tuple, account: fts.FileLister, settings: fts.FtsSettings,
                  infos: Sequence[MessageInfo], codec: str) -> dict[int, FtsAnswer]:
    """``fts_answers`` from the account's index; when the index cannot be used
    (a full disk, an unreadable file), no answers: the search scans, slower but right."""
    try:
        answers = fts_answers(criteria, fts.index_for(account, settings), account, infos, codec)
        if answers and len(next(iter(answers.values())).unsure) > fts.INLINE_INDEX:
            fts.INDEXER.schedule(account, settings)  # a backlog: indexed in the background, scanned meanwhile
        return answers
    except (sqlite3.Error, OSError) as exc:
        log.warning("full-text index of %s unusable, searching without it: %s", account.path, exc)
        return {}
