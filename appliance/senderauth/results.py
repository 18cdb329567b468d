"""The Authentication-Results header field (RFC 8601): writing ours, and finding the ones that claim to be ours.

Our own code, not the ``authres`` package: what is needed is small (one writer, and reading only the
authserv-id of a field), and the reader must never fail on the hostile fields it is there to remove.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

AUTHENTICATION_RESULTS = "Authentication-Results"
# RFC 2045 §5.1 token: printable US-ASCII but SP and tspecials.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = AUTHENTICATION_RESULTS.lower().encode()
_NAME_ANYCASE = re.compile(re.escape(_NAME), re.IGNORECASE)  # finds a candidate without a lower-cased copy
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One resinfo (RFC 8601 §2.2): ``method=result reason="..." ptype.property=value ...``."""

    method: str  # iprev spf dkim dmarc arc
    result: str
    reason: str = ""
    properties: tuple[tuple[str, str], ...] = ()  # ("smtp.mailfrom", "example.org"), ...
    comment: str = ""  # a parenthesised comment after the result, e.g. "(p=reject dis=reject)"


def value(text: str) -> str:
    """``text`` as an RFC 2045 value: the token itself, else a quoted-string (controls become spaces)."""
    if _TOKEN.fullmatch(text):
        return text
    text = _CONTROL.sub(" ", text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _comment(text: str) -> str:
    text = _CONTROL.sub(" ", text).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({text})"


def format_result(result: MethodResult) -> str:
    parts = [f"{result.method}={result.result}"]
    if result.comment:
        parts.append(_comment(result.comment))
    if result.reason:
        parts.append(f"reason={value(result.reason[:MAX_REASON])}")
    parts.extend(f"{name}={value(text)}" for name, text in result.properties if text)
    return " ".join(parts)


def header_value(authserv_id: str, results: Sequence[MethodResult]) -> str:
    """The field's value, one resinfo a line (the SMTP engine folds at the line breaks); ``none`` when no method
    ran (RFC 8601 §2.2 no-result)."""
    if not results:
        return f"{authserv_id}; none"
    return f"{authserv_id};\n" + ";\n".join(format_result(result) for result in results)


def authserv_id(field_value: str) -> str | None:
    """The authserv-id a field's value starts with (RFC 8601 §2.2: [CFWS] authserv-id, a token or a
    quoted-string), unquoted; None when the value does not start with one."""
    text = _skip_cfws(field_value, 0)
    if text >= len(field_value):
        return None
    if field_value[text] == '"':
        out = []
        index = text + 1
        while index < len(field_value):
            char = field_value[index]
            if char == "\\" and index + 1 < len(field_value):
                out.append(field_value[index + 1])
                index += 2
                continue
            if char == '"':
                return "".join(out)
            out.append(char)
            index += 1
        return None  # an unterminated quoted-string
    match = _TOKEN.match(field_value, text)
    return match.group(0) if match else None


def _skip_cfws(text: str, index: int) -> int:
    """Past white space and (nested, RFC 5322 §3.2.2) comments."""
    depth = 0
    while index < len(text):
        char = text[index]
        if depth and char == "\\":
            index += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth and char not in " \t\r\n":
            return index
        index += 1
    return index


def _fields(head: bytes) -> Iterable[tuple[int, int]]:
    """(start, end) of each field of a header section (a field: its line and the continuation lines, RFC 5322
    §2.2.3), CRLF line endings."""
    start = 0
    size = len(head)
    while start < size:
        end = head.find(b"\r\n", start)
        while end >= 0 and head[end + 2:end + 3] in (b" ", b"\t"):
            end = head.find(b"\r\n", end + 2)
        end = size if end < 0 else end + 2
        yield start, end
        start = end


_DMARC_FAILURE = re.compile(r"(?:^|;)\s*dmarc\s*=\s*fail\s*\(p=[a-z]+ dis=([a-z]+)\)", re.IGNORECASE)


def _ours(content: bytes, own_id: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, unfolded value) of each Authentication-Results field whose authserv-id is ``own_id``, in the
    header section of ``content``, topmost first."""
    if content.startswith(b"\r\n"):
        return  # no header section at all
    end = content.find(b"\r\n\r\n")
    if _NAME_ANYCASE.search(content, 0, len(content) if end < 0 else end + 2) is None:
        return  # the common case: no such field, nothing copied
    head = content if end < 0 else content[:end + 2]
    own = own_id.lower()
    for start, stop in _fields(head):
        name, colon, rest = head[start:stop].partition(b":")
        if colon and name.rstrip(b" \t").lower() == _NAME:
            text = rest.replace(b"\r\n", b"").decode("utf-8", "replace")
            if (authserv_id(text) or "").lower() == own:
                yield start, stop, text


def gateway_dmarc_disposition(content: bytes, own_id: str) -> str | None:
    """The DMARC disposition (``dis=``) of a failure in the topmost Authentication-Results with ``own_id``: what
    a gateway of ours, which wrote it (``header_value``), found; None when it found no failure."""
    for _, _, text in _ours(content, own_id):
        found = _DMARC_FAILURE.search(text)
        return found.group(1).lower() if found else None
    return None


def remove_ours(content: bytes, own_id: str) -> tuple[bytes, int]:
    """``content`` without the Authentication-Results fields whose authserv-id is ``own_id`` (RFC 8601 §5: a
    receiver removes those that claim to come from it), and how many there were; the same object when none."""
    spans = list(_ours(content, own_id))
    if not spans:
        return content, 0
    kept = []
    position = 0
    for start, stop, _ in spans:
        kept.append(content[position:start])
        position = stop
    kept.append(content[position:])
    return b"".join(kept), len(spans)
