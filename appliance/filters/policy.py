"""From the scanners' answers about one message to one decision: refuse, tempfail, quarantine or deliver.

Pure functions on data (the scanners' Verdicts, the failures the engine recorded, the recipients' SpamPolicy):
no I/O, no clock, so every rule here is tested by itself. What decides, from the most severe down:

- refuse (5xx): a virus (``554 5.7.1 Message refused: virus <signature> found``, unless filters.virus_action
  is quarantine), a spam score at or above the policy's ``reject`` (``550 5.7.1``), a scanner's own REJECT
  (its reply, or ``550 5.7.1``);
- tempfail (4xx): a scanner that could not scan and whose ``on_error`` is tempfail (``451 4.7.1 Content
  scanner <name> unavailable, try again later``), a scanner's own SOFT_REJECT or GREYLIST (``451 4.7.1``);
- quarantine: a score at or above ``quarantine``, a scanner's own QUARANTINE, a virus with virus_action
  quarantine;
- deliver, tagged (``X-Spam-Flag: YES``, and the Junk folder on a host that delivers locally) when the score
  reaches ``add_header`` or a scanner asks for ADD_HEADER or REWRITE_SUBJECT, else untagged.

A refusal outranks a tempfail: a message a scanner found to be a virus is refused for good even while another
scanner is down (retrying could only end the same way). A tempfail outranks the quarantine and delivery: the
verdict of a scanner that did not answer is not known. The spam score is the highest any scanner gave.

Every message delivered or quarantined gets the same headers: ``X-Spam-Flag``, with a score ``X-Spam-Score``
and ``X-Spam-Status`` (SpamAssassin's format), and one summary ``X-Mailfleet-Scan`` in the style of
Authentication-Results (RFC 8601 §2.2: the host, then ``method=result (comment)`` per scanner, ``;``
between them), built from printable ASCII only, whatever the daemons sent.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.config.model import SpamPolicy

from .scanner import Action, Change, Verdict

# The headers this host writes: removed from the mail of every client that is not a trusted gateway.
SPAM_FLAG = "X-Spam-Flag"
SPAM_SCORE = "X-Spam-Score"
SPAM_STATUS = "X-Spam-Status"
SUMMARY = "X-Mailfleet-Scan"
OWN_HEADERS = (SPAM_FLAG, SPAM_STATUS, SPAM_SCORE, SUMMARY)
JUNK = "Junk"
SPAM_PREFIX = "[SPAM] "  # before the Subject, for a REWRITE_SUBJECT that came without a new one
FOLD_AT = 76  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
_TOKEN_MAX = 200  # one value taken from a daemon, at most (a signature name, a reason)
_REPLY_MAX = 400  # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its code and CRLF
_NAME = re.compile(r"[^A-Za-z0-9._-]")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_REPLY = re.compile(r"^([245])\d\d(?:[ -]|$)")
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?:\s|$)")


class Outcome(enum.Enum):
    """What happens to the message: exactly one of these, least to most severe."""

    DELIVER = "deliver"
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"
    REFUSE = "refuse"


_RANK = {outcome: rank for rank, outcome in enumerate(Outcome)}


@dataclass(frozen=True, slots=True)
class Failure:
    """A scanner that gave no verdict (daemon down, timeout, protocol error, its circuit open)."""

    scanner: str
    reason: str  # one line, naming what went wrong
    on_error: str = "tempfail"  # the scanner's filters.scanners[].on_error: tempfail or accept


Answer = Verdict | Failure


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer about one message."""

    outcome: Outcome
    reply: str | None = None  # REFUSE and TEMPFAIL: the SMTP reply
    reason: str = ""  # one line for the log and the quarantine: what decided, by which scanner
    spam: bool = False  # tagged: X-Spam-Flag: YES
    folder: str | None = None  # where local delivery files it (Junk), None: INBOX
    # A scanner's REWRITE_SUBJECT: the new Subject it gave whole; when it gave none, SPAM_PREFIX goes in front
    # of the message's own.
    rewrite_subject: bool = False
    subject: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # added to the message (delivered or quarantined)
    changes: tuple[Change, ...] = ()  # the milters' modifications, in the order the scanners are configured
    quarantine: Mapping[str, object] | None = None  # QUARANTINE: the verdict stored with the held message


@dataclass(frozen=True, slots=True)
class _Candidate:
    outcome: Outcome
    reply: str | None
    reason: str
    scanner: str


def spam_score(answers: Iterable[Answer]) -> tuple[float | None, Verdict | None]:
    """The highest score any scanner gave, and that scanner's verdict (None, None without a score). A score
    that is not a number (NaN) is no score."""
    best: Verdict | None = None
    high = -math.inf
    for answer in answers:
        if isinstance(answer, Verdict) and answer.score is not None and not math.isnan(answer.score):
            if best is None or answer.score > high:
                best, high = answer, answer.score
    return (high, best) if best is not None else (None, None)


def decide(answers: Iterable[Answer], policy: SpamPolicy, hostname: str, *, virus_action: str = "reject",
           files_junk: bool = False) -> Decision:
    """One decision from the answers of every scanner (in the order they are configured). ``files_junk``: this
    host delivers into mailboxes, so tagged mail goes to the Junk folder."""
    answers = tuple(answers)
    score, top = spam_score(answers)
    candidates: list[_Candidate] = []
    tagged = rewrite = False
    subject: str | None = None
    for answer in answers:
        if isinstance(answer, Failure):
            if answer.on_error != "accept":
                candidates.append(_Candidate(
                    Outcome.TEMPFAIL, f"451 4.7.1 Content scanner {_name(answer.scanner)} unavailable, "
                                      "try again later", f"{answer.scanner} unavailable: {answer.reason}",
                    answer.scanner))
            continue
        if answer.virus is not None:
            signature = _text(answer.virus)
            if virus_action == "quarantine":
                candidates.append(_Candidate(Outcome.QUARANTINE, None, f"virus {signature}", answer.scanner))
            else:
                candidates.append(_Candidate(Outcome.REFUSE, f"554 5.7.1 Message refused: virus {signature} found",
                                             f"virus {signature}", answer.scanner))
        candidate = _action(answer)
        if candidate is not None:
            candidates.append(candidate)
        if answer.action in (Action.ADD_HEADER, Action.REWRITE_SUBJECT):
            tagged = True
        if answer.action is Action.REWRITE_SUBJECT and not rewrite:
            rewrite, subject = True, answer.subject or None
    if score is not None and top is not None:
        threshold = _threshold(score, policy)
        if threshold == "reject":
            candidates.append(_Candidate(Outcome.REFUSE, f"550 5.7.1 Message refused as spam (score {score:.1f})",
                                         f"spam score {score:.1f} >= {policy.reject}", top.scanner))
        elif threshold == "quarantine":
            candidates.append(_Candidate(Outcome.QUARANTINE, None, f"spam score {score:.1f} >= {policy.quarantine}",
                                         top.scanner))
        if threshold is not None:
            tagged = True
    chosen = max(candidates, key=lambda c: _RANK[c.outcome], default=None)  # the first of the most severe
    if chosen is not None and chosen.outcome in (Outcome.REFUSE, Outcome.TEMPFAIL):
        return Decision(chosen.outcome, chosen.reply, f"{chosen.reason} ({chosen.scanner})")
    headers = scan_headers(answers, policy, hostname, tagged, score, top)
    changes = tuple(change for answer in answers if isinstance(answer, Verdict) for change in answer.changes)
    folder = JUNK if tagged and files_junk else None
    if chosen is not None:  # the quarantine
        reason = f"{chosen.reason} ({chosen.scanner})"
        held = {"reason": reason, "scanner": chosen.scanner, "score": score, "host": hostname,
                "summary": dict(headers)[SUMMARY]}
        return Decision(Outcome.QUARANTINE, None, reason, tagged, folder, rewrite, subject, headers, changes, held)
    return Decision(Outcome.DELIVER, None, "", tagged, folder, rewrite, subject, headers, changes)


def _threshold(score: float, policy: SpamPolicy) -> str | None:
    """The most severe threshold ``score`` reaches: reject, quarantine, add_header, or None."""
    for name, limit in (("reject", policy.reject), ("quarantine", policy.quarantine),
                        ("add_header", policy.add_header)):
        if limit is not None and score >= limit:
            return name
    return None


def _action(verdict: Verdict) -> _Candidate | None:
    """What a scanner's own action asks for (rspamd's actions, a milter's replies)."""
    action, name = verdict.action, verdict.scanner
    if action is Action.REJECT:
        return _Candidate(Outcome.REFUSE, scanner_reply(verdict.reply, "5") or
                          f"550 5.7.1 Message refused by content scanner {_name(name)}", "rejected", name)
    if action in (Action.SOFT_REJECT, Action.GREYLIST):
        return _Candidate(Outcome.TEMPFAIL, scanner_reply(verdict.reply, "4") or
                          f"451 4.7.1 Message deferred by content scanner {_name(name)}, try again later",
                          action.value, name)
    if action is Action.QUARANTINE:
        return _Candidate(Outcome.QUARANTINE, None, "quarantine asked for" + _comment(verdict.detail), name)
    return None


def scanner_reply(reply: str | None, kind: str) -> str | None:
    """A scanner's own SMTP reply (a milter's SMFIR_REPLYCODE) made safe to send: its first line, of the class
    asked for (``kind``: "4" or "5"), printable ASCII, one line, with an enhanced code (RFC 3463); None when it
    is none of that."""
    if not reply:
        return None
    line = reply.splitlines()[0] if reply.splitlines() else ""
    match = _REPLY.match(line)
    if match is None or match.group(1) != kind or line.startswith("421"):  # 421 would mean a closing channel
        return None
    code, text = line[:3], _text(line[4:], _REPLY_MAX).strip()
    if not _ENHANCED.match(text):
        text = f"{kind}.7.1 {text}".rstrip()
    return f"{code} {text}"


def scan_headers(answers: tuple[Answer, ...], policy: SpamPolicy, hostname: str, tagged: bool,
                 score: float | None, top: Verdict | None) -> tuple[tuple[str, str], ...]:
    """The headers of a scanned message: the scanners' own (rspamd's), X-Spam-Flag, with a score X-Spam-Score
    and X-Spam-Status, and the summary."""
    headers: list[tuple[str, str]] = []
    own = {name.lower() for name in OWN_HEADERS}
    for answer in answers:
        if isinstance(answer, Verdict):
            for name, value in answer.headers:
                if _FIELD_NAME.fullmatch(name) and name.lower() not in own:
                    headers.append((name, _text(value, 900)))
    headers.append((SPAM_FLAG, "YES" if tagged else "NO"))
    if score is not None and top is not None:
        headers.append((SPAM_SCORE, f"{score:.1f}"))
        headers.append((SPAM_STATUS, spam_status(tagged, score, _required(policy, top), top.rules)))
    headers.append((SUMMARY, summary(answers, policy, hostname)))
    return tuple(headers)


def _required(policy: SpamPolicy, top: Verdict) -> float | None:
    """The score from which this host tags: the lowest threshold in force, else the scanner's own."""
    limits = [limit for limit in (policy.add_header, policy.quarantine, policy.reject) if limit is not None]
    return min(limits) if limits else top.required


def spam_status(tagged: bool, score: float, required: float | None, rules: Iterable[str]) -> str:
    """SpamAssassin's X-Spam-Status: ``Yes, score=1000.0 required=5.0 tests=GTUBE,NO_RECEIVED``, folded
    between the tests."""
    tests = [_NAME.sub("_", rule)[:_TOKEN_MAX] for rule in rules if rule]
    head = f"{'Yes' if tagged else 'No'}, score={score:.1f}"
    if required is not None:
        head += f" required={required:.1f}"
    return fold([head + " tests=" + (tests[0] if tests else "none"), *tests[1:]], ",", spaced=False)


def summary(answers: Iterable[Answer], policy: SpamPolicy, hostname: str) -> str:
    """``<host>; clamav=clean; spamassassin=spam score=1000.0; rspamd=skipped (larger than 52428800 bytes)``."""
    tokens = [_text(hostname) or "localhost"]
    for answer in answers:
        tokens.append(f"{_name(answer.scanner)}={_result(answer, policy)}")
    return fold(tokens, ";")


def _result(answer: Answer, policy: SpamPolicy) -> str:
    if isinstance(answer, Failure):
        word = "skipped" if answer.on_error == "accept" else "temperror"
        return word + _comment("error: " + answer.reason)
    parts = []
    if answer.virus is not None:
        parts.append("virus" + _comment(answer.virus))
    if answer.score is not None and not math.isnan(answer.score):
        spam = answer.spam if answer.required is not None else (
            policy.add_header is not None and answer.score >= policy.add_header)
        parts.append(f"{'spam' if spam else 'ham'} score={answer.score:.1f}")
    if answer.action is not Action.NONE:
        parts.append("action=" + answer.action.value.replace(" ", "-"))
    if answer.skipped is not None:  # not scanned, or not wholly: never "clean"
        parts.append("skipped" + _comment(answer.skipped))
    result = " ".join(parts) if parts else "clean"
    return result + _comment(answer.detail) if answer.detail else result


def fold(parts: list[str], separator: str, spaced: bool = True) -> str:
    """``parts`` joined by ``separator`` (and a space when ``spaced``), with a line break (which becomes a fold,
    RFC 5322 §2.2.3) between two parts where a line would pass FOLD_AT characters."""
    joint = " " if spaced else ""
    out = ""
    line = 0
    for index, part in enumerate(parts):
        piece = part + (separator if index < len(parts) - 1 else "")
        if index and line + len(joint) + len(piece) > FOLD_AT:
            out += "\n" + piece
            line = len(piece) + 1
        else:
            out += (joint if index else "") + piece
            line += len(piece) + (len(joint) if index else 0)
    return out


def _comment(text: str) -> str:
    """`` (text)`` as an RFC 5322 comment: no parentheses, backslashes or ``;`` inside; "" for nothing."""
    text = _text(text).translate(str.maketrans("()\\;", "[]/,"))
    return f" ({text})" if text else ""


def _name(name: str) -> str:
    return _NAME.sub("-", name)[:64] or "scanner"


def _text(text: str, limit: int = _TOKEN_MAX) -> str:
    """Printable ASCII only, one line, at most ``limit`` characters: what a daemon sent, made safe for a header
    or a reply."""
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(str(text).split()))[:limit]
