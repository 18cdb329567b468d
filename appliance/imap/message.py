"""MIME structure of a stored message, for FETCH (sections, BODYSTRUCTURE, ENVELOPE) and SEARCH.

Works on the exact bytes (offsets and sizes must match what BODY[...] returns), so it splits the
message itself instead of going through the email package; the email package is used only to
decode text for SEARCH.
"""

from __future__ import annotations

import email
import email.header
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

from appliance.imap.parser import Section
from appliance.imap.response import astring_nil, nstring, quote

MAX_DEPTH = 40  # nesting of multiparts/message/rfc822 we descend into
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header including its blank line, body). A message without blank line is all header."""
    if data.startswith(b"\r\n"):
        return data[:2], data[2:]
    if data.startswith(b"\n"):
        return data[:1], data[1:]
    match = _HEADER_END.search(data)
    if not match:
        return data, b""
    return data[: match.end()], data[match.end():]


def header_fields(header: bytes) -> list[tuple[str, bytes]]:
    """[(lower-case name, raw unfolded value)] in order."""
    fields: list[tuple[str, bytes]] = []
    current_name: str | None = None
    current: list[bytes] = []
    for line in header.splitlines():
        if line[:1] in (b" ", b"\t") and current_name is not None:
            current.append(line)
            continue
        if current_name is not None:
            fields.append((current_name, b"".join(current).strip()))
        name, sep, value = line.partition(b":")
        if sep and name and not name[-1:].isspace() and b" " not in name.strip():
            current_name = name.strip().decode("ascii", "replace").lower()
            current = [value]
        else:
            current_name = None
            current = []
    if current_name is not None:
        fields.append((current_name, b"".join(current).strip()))
    return fields


def raw_header_lines(header: bytes) -> list[tuple[str, bytes]]:
    """[(lower-case name, the field's raw bytes including folding and line end)] for HEADER.FIELDS."""
    out: list[tuple[str, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + line)
            continue
        name = line.partition(b":")[0].strip().decode("ascii", "replace").lower()
        out.append((name, line))
    return out


def parse_params(value: bytes) -> tuple[str, list[tuple[str, str]]]:
    """'text/plain; charset="x"' -> ("text/plain", [("charset", "x")])."""
    text = value.decode("latin-1")
    text = re.sub(r"\([^()]*\)", "", text)  # drop (simple) comments
    head, _, rest = text.partition(";")
    params: list[tuple[str, str]] = []
    for match in re.finditer(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*;?', rest):
        name, val = match.group(1), match.group(2).strip()
        if val.startswith('"') and val.endswith('"') and len(val) >= 2:
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        params.append((name, val))
    return head.strip(), params


@dataclass
class Part:
    """One MIME entity: its MIME header, its body and, for containers, what is inside."""

    header: bytes
    body: bytes
    ctype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # message/rfc822: the encapsulated message
    shown_type: tuple[str, str] | None = None  # type/subtype as written (BODYSTRUCTURE keeps the case)
    fields: list[tuple[str, bytes]] = field(default_factory=list)

    def get(self, name: str) -> bytes | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[bytes]:
        return [value for key, value in self.fields if key == name]


def parse_part(data: bytes, default_type: tuple[str, str] = ("text", "plain"), depth: int = 0) -> Part:
    header, body = split_header(data)
    fields = header_fields(header)
    part = Part(header, body, fields=fields)
    ctype_raw = part.get("content-type")
    ctype, csub = default_type
    params: list[tuple[str, str]] = [("charset", "us-ascii")] if default_type == ("text", "plain") else []
    if ctype_raw:
        full, parsed = parse_params(ctype_raw)
        main, slash, sub = full.partition("/")
        if slash and main.strip() and sub.strip():
            ctype, csub, params = main.strip().lower(), sub.strip().lower(), parsed
            part.shown_type = (main.strip(), sub.strip())
            if ctype == "text" and not params:
                params = [("charset", "us-ascii")]  # RFC 2045 §5.2 default, shown as Dovecot does
    part.ctype, part.subtype, part.params = ctype, csub, params
    if depth >= MAX_DEPTH:
        return part
    if ctype == "multipart":
        boundary = next((v for k, v in params if k.lower() == "boundary"), None)
        if boundary:
            child_default = ("message", "rfc822") if csub == "digest" else ("text", "plain")
            for start, end in split_multipart(body, boundary.encode("latin-1")):
                child = parse_part(body[start:end], child_default, depth + 1)
                if child.ctype == "multipart" and _ends_with_close(child) and body[end:end + 2] == b"\r\n":
                    # Dovecot gives the line end after a nested close-delimiter to the nested part
                    child = parse_part(body[start:end + 2], child_default, depth + 1)
                part.children.append(child)
    elif ctype == "message" and csub in ("rfc822", "global"):
        part.message = parse_part(body, ("text", "plain"), depth + 1)
    return part


def _delimiters(body: bytes, boundary: bytes) -> Iterator[tuple[int, int, bool]]:
    """(start of the delimiter incl. its leading CRLF, end incl. trailing CRLF, is close-delimiter)."""
    marker = b"--" + boundary
    pos = 0
    while True:
        at = body.find(marker, pos)
        if at < 0:
            return
        pos = at + len(marker)
        if at == 0:
            start = 0
        elif body[at - 1:at] == b"\n":
            start = at - 2 if body[at - 2:at] == b"\r\n" else at - 1
        else:
            continue  # not at the start of a line
        close = body[pos:pos + 2] == b"--"
        end = pos + 2 if close else pos
        while body[end:end + 1] in (b" ", b"\t"):
            end += 1
        if body[end:end + 2] == b"\r\n":
            end += 2
        elif body[end:end + 1] == b"\n":
            end += 1
        elif end != len(body):
            continue  # "--boundary" followed by other text is not a delimiter
        yield start, end, close


def split_multipart(body: bytes, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of the parts between "--boundary" lines (RFC 2046 §5.1.1: the CRLF before a
    delimiter belongs to the delimiter)."""
    parts: list[tuple[int, int]] = []
    start: int | None = None
    for d_start, d_end, close in _delimiters(body, boundary):
        if start is not None:
            parts.append((start, max(start, d_start)))
        if close:
            return parts
        start = d_end
    if start is not None:
        parts.append((start, len(body)))
    return parts


def _ends_with_close(part: Part) -> bool:
    boundary = next((v for k, v in part.params if k.lower() == "boundary"), None)
    return boundary is not None and part.body.rstrip(b" \t").endswith(b"--" + boundary.encode("latin-1") + b"--")


class Message:
    """A message's bytes plus its lazily built MIME tree."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._root: Part | None = None
        self._top: Part | None = None

    @property
    def root(self) -> Part:
        if self._root is None:
            self._root = parse_part(self.data)
        return self._root

    @property
    def top(self) -> Part:
        """The top-level header only (no MIME tree): enough for ENVELOPE and header SEARCH keys."""
        if self._root is not None:
            return self._root
        if self._top is None:
            header, body = split_header(self.data)
            self._top = Part(header, body, fields=header_fields(header))
        return self._top

    # ---------------------------------------------------------------- sections (RFC 3501 §6.4.5)

    def section(self, section: Section) -> bytes | None:
        """Bytes of BODY[section], or None when the part does not exist."""
        if not section.parts:
            return self._text_of(self.top, section, whole=self.data)
        part = self.find(section.parts)
        if part is None:
            return None
        if section.text is None:
            return part.body
        if section.text == "MIME":
            return part.header
        if part.message is None:
            return None
        return self._text_of(part.message, section, whole=part.body)

    def find(self, numbers: tuple[int, ...]) -> Part | None:
        current = self.root
        for i, n in enumerate(numbers):
            if i > 0 and current.message is not None:
                current = current.message
            if current.children:
                if n > len(current.children):
                    return None
                current = current.children[n - 1]
            elif current.ctype == "multipart" or n != 1:
                return None
        return current

    @staticmethod
    def _text_of(msg: Part, section: Section, whole: bytes) -> bytes:
        if section.text is None:
            return whole
        if section.text == "HEADER":
            return msg.header
        if section.text == "TEXT":
            return msg.body
        wanted = {f.lower() for f in section.fields}
        keep = section.text == "HEADER.FIELDS"
        lines = [raw for name, raw in raw_header_lines(msg.header) if (name in wanted) == keep]
        return b"".join(line if line.endswith(b"\n") else line + b"\r\n" for line in lines) + b"\r\n"

    # ---------------------------------------------------------------- BODYSTRUCTURE / ENVELOPE

    def bodystructure(self, extended: bool = True) -> str:
        return _structure(self.root, extended)

    def envelope(self) -> str:
        return envelope_of(self.top)

    def sent_date(self) -> datetime | None:
        value = self.top.get("date")
        if not value:
            return None
        try:
            return parsedate_to_datetime(value.decode("ascii", "replace"))
        except (TypeError, ValueError, IndexError):
            return None

    # ---------------------------------------------------------------- SEARCH helpers

    def decoded_header(self, name: str) -> list[str]:
        return [decode_words(v) for v in self.top.get_all(name.lower())]


def decode_words(value: bytes) -> str:
    """RFC 2047 encoded-words -> text (for SEARCH); undecodable input falls back to UTF-8/latin-1."""
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return text


def _q(value: str) -> str:
    """Quote a value that was decoded from message bytes as latin-1 (byte-transparent)."""
    return quote(value.encode("latin-1", "replace"))


def _param_list(params: list[tuple[str, str]], normalise: bool = False) -> str:
    """Parameters as written; BODY (normalise=True) lower-cases names and the charset, as Dovecot."""
    if not params:
        return "NIL"
    if normalise:
        params = [(k.lower(), v.lower() if k.lower() == "charset" else v) for k, v in params]
    return "(" + " ".join(f"{_q(k)} {_q(v)}" for k, v in params) + ")"


def _disposition(part: Part) -> str:
    raw = part.get("content-disposition")
    if not raw:
        return "NIL"
    kind, params = parse_params(raw)
    if not kind:
        return "NIL"
    return f"({_q(kind)} {_param_list(params)})"


def _language(part: Part) -> str:
    raw = part.get("content-language")
    if not raw:
        return "NIL"
    langs = [x.strip() for x in raw.decode("ascii", "replace").split(",") if x.strip()]
    if not langs:
        return "NIL"
    if len(langs) == 1:
        return quote(langs[0])
    return "(" + " ".join(quote(x) for x in langs) + ")"


def _text_value(part: Part, name: str) -> str:
    value = part.get(name)
    return nstring(value) if value is not None else "NIL"


def _line_count(data: bytes) -> int:
    """Body lines = line breaks in the body (a last line without CRLF is not counted, as Dovecot)."""
    return data.count(b"\n")


def _structure(part: Part, extended: bool) -> str:
    # RFC 3501 §7.4.2 BODYSTRUCTURE
    if part.ctype == "multipart":
        if not part.children:
            # a multipart without parts: Dovecot shows it as an empty text/plain part
            inner = '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'
            inner += " NIL NIL NIL NIL)" if extended else ")"
        else:
            inner = "".join(_structure(c, extended) for c in part.children)
        out = f"({inner} {_q(part.shown_type[1] if part.shown_type and extended else part.subtype)}"
        if extended:
            out += f" {_param_list(part.params)} {_disposition(part)} {_language(part)}"
            out += f" {_text_value(part, 'content-location')}"
        return out + ")"
    encoding = part.get("content-transfer-encoding")
    enc = encoding.decode("latin-1").strip() if encoding else "7bit"
    # Dovecot: BODYSTRUCTURE keeps the header's case, BODY is lower-cased
    shown = part.shown_type if part.shown_type and extended else (part.ctype, part.subtype)
    fields = [_q(shown[0]), _q(shown[1]), _param_list(part.params, normalise=not extended),
              _text_value(part, "content-id"), _text_value(part, "content-description"),
              _q(enc or "7bit"), str(len(part.body))]
    if part.ctype == "text":
        fields.append(str(_line_count(part.body)))
    elif part.message is not None:
        fields.append(envelope_of(part.message))
        fields.append(_structure(part.message, extended))
        fields.append(str(_line_count(part.body)))
    if extended:
        fields += [_text_value(part, "content-md5"), _disposition(part), _language(part),
                   _text_value(part, "content-location")]
    return "(" + " ".join(fields) + ")"


# -------------------------------------------------------------------------------- ENVELOPE


def envelope_of(part: Part) -> str:
    """RFC 3501 §7.4.2 ENVELOPE: raw (not decoded) header values; sender/reply-to default to from."""
    def value(name: str) -> str:
        v = part.get(name)
        return nstring(v) if v is not None else "NIL"

    def addresses(name: str, fallback: str | None = None) -> str:
        raws = part.get_all(name)
        if not raws and fallback:
            raws = part.get_all(fallback)
        if not raws:
            return "NIL"
        parsed: list[Address] = []
        for raw in raws:
            parsed += parse_addresses(raw)
        if not parsed and fallback:  # an empty Sender:/Reply-To: also falls back to From:
            return addresses(fallback)
        if not parsed:
            return "NIL"
        return "(" + "".join(
            "(" + " ".join(astring_nil(x) for x in addr) + ")" for addr in parsed) + ")"

    from_ = addresses("from")
    sender = addresses("sender") if part.get("sender") is not None else "NIL"
    reply_to = addresses("reply-to") if part.get("reply-to") is not None else "NIL"
    return "(" + " ".join([
        value("date"), value("subject"), from_, from_ if sender == "NIL" else sender,
        from_ if reply_to == "NIL" else reply_to, addresses("to"), addresses("cc"), addresses("bcc"),
        value("in-reply-to"), value("message-id"),
    ]) + ")"


_TOKEN = re.compile(rb'\s+|"(?:[^"\\]|\\.)*"?|[<>,:;@]|[^\s"<>,:;@()]+|\(|\)')


def _tokens(raw: bytes) -> list[tuple[str, bytes]]:
    """Tokens of an address header; a comment becomes one ("c", text) token."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    depth = 0
    comment_start = 0
    while pos < len(raw):
        match = _TOKEN.match(raw, pos)
        if not match:
            pos += 1
            continue
        tok = match.group(0)
        pos = match.end()
        if tok == b"(":
            if depth == 0:
                comment_start = pos
            depth += 1
        elif tok == b")":
            if depth == 1:
                out.append(("c", raw[comment_start:pos - 1].strip()))
            depth = max(0, depth - 1)
        elif depth or tok.isspace():
            continue
        elif tok.startswith(b'"'):
            inner = tok[1:-1] if tok.endswith(b'"') and len(tok) > 1 else tok[1:]
            out.append(("q", re.sub(rb"\\(.)", rb"\1", inner)))
        elif tok in (b"<", b">", b",", b":", b";", b"@"):
            out.append((tok.decode(), tok))
        else:
            out.append(("a", tok))
    return out


Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


@functools.lru_cache(maxsize=8192)
def parse_addresses(raw: bytes) -> tuple[Address, ...]:
    """Cached: the same senders and recipients come back in many messages."""
    return tuple(_parse_addresses(raw))


def _parse_addresses(raw: bytes) -> list[Address]:
    """Address list -> [(name, adl, mailbox, host)], groups as RFC 3501 §7.4.2 describes."""
    all_tokens = _tokens(raw)
    tokens = [t for t in all_tokens if t[0] != "c"]
    comments = _trailing_comments(all_tokens)
    out: list[Address] = []
    i = 0
    in_group = False
    while i < len(tokens):
        kind, _ = tokens[i]
        if kind == ",":
            i += 1
            continue
        if kind == ";":
            if in_group:
                out.append((None, None, None, None))
                in_group = False
            i += 1
            continue
        # collect one element up to a ',' or ';' (or ':' that opens a group)
        j = i
        phrase: list[bytes] = []
        while j < len(tokens) and tokens[j][0] not in (",", ";", ":", "<"):
            phrase.append(tokens[j][1] if tokens[j][0] != "@" else b"@")
            j += 1
        if j < len(tokens) and tokens[j][0] == ":" and not in_group:
            out.append((None, None, b" ".join(p for p in phrase), None))
            in_group = True
            i = j + 1
            continue
        if j < len(tokens) and tokens[j][0] == "<":
            k = j + 1
            inner: list[tuple[str, bytes]] = []
            while k < len(tokens) and tokens[k][0] != ">":
                inner.append(tokens[k])
                k += 1
            name = b" ".join(phrase) or None
            adl = None
            if b":" in [t[1] for t in inner]:
                colon = [t[1] for t in inner].index(b":")
                adl = b"".join(t[1] for t in inner[:colon]) or None
                inner = inner[colon + 1:]
            mailbox, host = _split_addr([t[1] for t in inner])
            out.append((name, adl, mailbox, host))
            i = k + 1
            while i < len(tokens) and tokens[i][0] not in (",", ";"):
                i += 1
            continue
        mailbox, host = _split_addr(phrase)
        if mailbox is not None or host is not None:
            # "user@domain (Real Name)": the old comment form names the mailbox (as Dovecot shows it)
            out.append((comments.get(len(out)) or None, None, mailbox, host))
        i = j if j > i else i + 1
    if in_group:
        out.append((None, None, None, None))
    return out


def _trailing_comments(tokens: list[tuple[str, bytes]]) -> dict[int, bytes]:
    """Comment text after the n-th comma-separated element, keyed by element index."""
    found: dict[int, bytes] = {}
    index = 0
    for kind, value in tokens:
        if kind == ",":
            index += 1
        elif kind == "c" and value and index not in found:
            found[index] = value
    return found


def _split_addr(parts: list[bytes]) -> tuple[bytes | None, bytes | None]:
    if not parts:
        return None, None
    if b"@" in parts:
        at = len(parts) - 1 - parts[::-1].index(b"@")
        return b"".join(parts[:at]) or None, b"".join(parts[at + 1:]) or None
    # RFC 3501 §7.4.2: no host -> "MISSING_DOMAIN"-less form; Dovecot reports the host as NIL
    return b"".join(parts) or None, None


def read_message(path: str) -> bytes:
    """A stored message file, whole."""
    with open(path, "rb") as handle:
        return handle.read()


def read_header(path: str, chunk: int = 16384) -> bytes:
    """The first bytes of a message file up to (and including) the end of its header."""
    with open(path, "rb") as handle:
        data = handle.read(chunk)
        while _HEADER_END.search(data) is None and not data.startswith((b"\r\n", b"\n")):
            more = handle.read(chunk * 4)
            if not more:
                break
            data += more
    return data


@functools.lru_cache(maxsize=50_000)
def cached_header(path: str) -> bytes:
    """The header of a stored (immutable) message file, for header SEARCH keys."""
    header, _ = split_header(read_header(path))
    return header


@functools.lru_cache(maxsize=100_000)
def cached_decoded_header(path: str, name: str) -> tuple[str, ...]:
    """Decoded, case-folded values of one header field of a stored message (header SEARCH keys)."""
    return tuple(v.casefold() for v in Message(cached_header(path)).decoded_header(name))


@functools.lru_cache(maxsize=100_000)
def cached_address_text(path: str, name: str) -> tuple[str, ...]:
    """FROM/TO/CC/BCC search text: the decoded header plus each parsed "name mailbox@host", so that
    "a (c)@ (c) b.org" is found as "a@b.org" (as Dovecot searches addresses)."""
    message = Message(cached_header(path))
    out = []
    for raw in message.top.get_all(name):
        text = decode_words(raw)
        for display, _, mailbox, host in parse_addresses(raw):
            parts = [decode_words(display) if display else "", (mailbox or b"").decode("utf-8", "replace")]
            if host:
                parts[-1] += "@" + host.decode("utf-8", "replace")
            text += "\n" + " ".join(p for p in parts if p)
        out.append(text.casefold())
    return tuple(out)


@functools.lru_cache(maxsize=100_000)
def cached_envelope(path: str) -> str:
    """ENVELOPE of a stored message. Message files are written once and never change, so the
    path is a safe cache key (a new message always gets a new file name)."""
    return Message(cached_header(path)).envelope()  # shares the header cache with header SEARCH


@functools.lru_cache(maxsize=20_000)
def cached_structure(path: str, extended: bool) -> str:
    with open(path, "rb") as handle:
        return Message(handle.read()).bodystructure(extended)
