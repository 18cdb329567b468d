"""Editing a message's header section (RFC 5322 §2.2, §3.5) byte for byte: what the filter engine changes in a
message, the milters' modifications (milter protocol v6, SMFIR_*) and the forged spam headers it removes.

Our own code and not the ``email`` package: a parsed and regenerated message is not the message received (the
generator refolds, re-encodes and reorders), while a content filter must change only the fields it names and
leave every other byte, the body above all, as it came. A message is split into its fields (each with its
folded continuation lines and its CRLF) and the rest (the blank line and the body), which is never touched
unless a milter replaces the body.

Every field this module writes is one field: a value's line breaks become folds (a continuation line starts
with white space, RFC 5322 §2.2.3), empty lines are dropped, so no value can end the header section or start
a field of its own, and no bare CR or LF is written (RFC 5321 §2.3.8).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from email.header import Header

from appliance.message.address import AddressError, parse_mailbox
from appliance.pipeline.stages import Transaction

from .scanner import (
    AddHeader,
    AddRecipient,
    Change,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    ReplaceBody,
)

# RFC 5322 §3.6.8: a field name is printable US-ASCII except the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but HT, and DEL
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


class HeaderError(ValueError):
    """A field that cannot be written (a name that is not a field name); str() says which."""


@dataclass(slots=True)
class Message:
    """A message as its header fields (each the field's bytes: name, colon, value, continuation lines, CRLF) and
    the rest: the empty line that ends the header section and the body (or b"" for a message without one, or
    whatever line did not look like a field, from there on)."""

    fields: list[bytes] = field(default_factory=list)
    rest: bytes = b""

    def __bytes__(self) -> bytes:
        return b"".join(self.fields) + self.rest

    @property
    def body(self) -> bytes:
        """The body: what follows the empty line, or the rest from the line that ended the header section."""
        return self.rest[2:] if self.rest.startswith(b"\r\n") else self.rest

    def names(self) -> list[str]:
        """Each field's name as written, in order."""
        return [field_name(raw) for raw in self.fields]

    def values(self, name: str) -> list[str]:
        """The unfolded values of every field called ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [field_value(raw) for raw in self.fields if field_name(raw).lower() == wanted]

    def remove(self, names: Collection[str]) -> int:
        """Remove every field whose name is one of ``names`` (case-insensitive), folds included; how many."""
        wanted = {n.lower() for n in names}
        kept = [raw for raw in self.fields if field_name(raw).lower() not in wanted]
        removed = len(self.fields) - len(kept)
        self.fields = kept
        return removed

    def add(self, name: str, value: str) -> None:
        """A field at the end of the header section (SMFIR_ADDHEADER)."""
        self.insert(len(self.fields), name, value)

    def insert(self, index: int, name: str, value: str) -> None:
        """A field at position ``index`` (0: the first; past the end: the last), as SMFIR_INSHEADER."""
        raw = encode_field(name, value)
        index = max(0, min(index, len(self.fields)))
        if index == len(self.fields) and self.fields and not self.fields[-1].endswith(b"\r\n"):
            self.fields[-1] += b"\r\n"  # the last field ended the data without a line end
        self.fields.insert(index, raw)
        if index == len(self.fields) - 1 and self.rest and not self.rest.startswith(b"\r\n"):
            self.rest = b"\r\n" + self.rest  # the non-field line that followed stays out of the header section

    def change(self, name: str, index: int, value: str) -> None:
        """The ``index``-th (1-based) field called ``name`` gets ``value``; "" deletes it. With fewer such
        fields, a non-empty value is added at the end (libmilter's smfi_chgheader)."""
        wanted = name.lower()
        seen = 0
        for position, raw in enumerate(self.fields):
            if field_name(raw).lower() == wanted:
                seen += 1
                if seen == max(index, 1):
                    if value:
                        self.fields[position] = encode_field(field_name(raw), value)
                    else:
                        del self.fields[position]
                    return
        if value:
            self.add(name, value)

    def replace_body(self, body: bytes) -> None:
        """A new body (SMFIR_REPLBODY); its line endings become CRLF and it ends with one."""
        body = _ANY_LINE_END.sub(b"\r\n", body)
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        if self.fields and not self.fields[-1].endswith(b"\r\n"):
            self.fields[-1] += b"\r\n"
        self.rest = b"\r\n" + body


def parse(data: bytes) -> Message:
    """Split ``data`` (CRLF line endings) into its header fields and the rest. A line that is neither a field
    (name, colon) nor the continuation of one (it starts with SP or HT, RFC 5322 §2.2.3) ends the header
    section, as the empty line does."""
    fields: list[bytes] = []
    position = 0
    size = len(data)
    while position < size:
        end = data.find(b"\r\n", position)
        end = size if end < 0 else end + 2
        line = data[position:end]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _is_field_start(line):
            fields.append(line)
        else:
            break
        position = end
    return Message(fields, data[position:])


def field_name(raw: bytes) -> str:
    return raw.split(b":", 1)[0].rstrip(b" \t").decode("ascii", "replace")


def field_value(raw: bytes) -> str:
    """The value unfolded (RFC 5322 §2.2.3: CRLF before white space removed), outer white space stripped."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    return value.replace(b"\r\n", b"").strip(b" \t").decode("utf-8", "replace")


def _is_field_start(line: bytes) -> bool:
    colon = line.find(b":")
    if colon <= 0:
        return False
    # RFC 5322 §4.5.3 (obsolete syntax) allows white space before the colon; the name itself has none.
    name = line[:colon].rstrip(b" \t")
    return _FIELD_NAME.fullmatch(name) is not None


def encode_field(name: str, value: str) -> bytes:
    """``Name: value`` and its CRLF as one field: the value's line breaks become folds, empty lines are dropped,
    control characters (but HT) become spaces. A non-ASCII value is written as UTF-8 (RFC 6532)."""
    name_bytes = name.encode("ascii", "replace")
    if not name.isascii() or _FIELD_NAME.fullmatch(name_bytes) is None:
        raise HeaderError(f"{name!r} is not a header field name (RFC 5322 §3.6.8)")
    lines: list[str] = []
    for line in _LINE_BREAK.split(value):
        line = _CONTROL.sub(" ", line).rstrip(" \t")
        if not line.strip(" \t"):
            continue  # an empty line would end the header section
        if lines and line[0] not in " \t":
            line = "\t" + line  # a continuation line starts with white space, or it would be a field
        lines.append(line if lines else line.lstrip(" \t"))
    text = "\r\n".join(lines)
    return name_bytes + b":" + (b" " + _utf8(text) if text else b"") + b"\r\n"


def header_value(text: str) -> str:
    """``text`` as a header value in US-ASCII: as it is when it is ASCII, else RFC 2047 encoded words (a new
    Subject a scanner gave, for a message that may go where SMTPUTF8 is not offered)."""
    if text.isascii():
        return text
    return Header(text, "utf-8").encode()


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # bytes a client decoded with surrogateescape, as they were
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def remove_fields(data: bytes, names: Collection[str]) -> bytes:
    """``data`` without any field called one of ``names``; the same object when there was none."""
    message = parse(data)
    if not message.remove(names):
        return data
    return bytes(message)


def rewrite_subject(data: bytes, subject: str) -> bytes:
    """The first Subject field gets ``subject`` (one is added when there is none)."""
    message = parse(data)
    message.change("Subject", 1, header_value(subject))
    return bytes(message)


def apply_changes(transaction: Transaction, changes: Iterable[Change]) -> list[str]:
    """Apply a milter's modifications in order: the header and body edits to ``transaction.content``, the
    sender and recipient edits to ``transaction.mail_from`` / ``accepted`` / ``rcpt_tos``. A change that cannot
    be made (a bad field name, a recipient that is not an address) is skipped; the returned lines say which."""
    refused: list[str] = []
    message: Message | None = None
    for change in changes:
        try:
            if isinstance(change, AddHeader | InsertHeader | ChangeHeader | ReplaceBody):
                if message is None:
                    message = parse(transaction.content)
                _edit(message, change)
            elif isinstance(change, ChangeSender):
                address = _address(change.address)
                transaction.mail_from = address or "<>"
            elif isinstance(change, AddRecipient):
                _add_recipient(transaction, _address(change.address))
            elif isinstance(change, DeleteRecipient):
                _delete_recipient(transaction, _unbracket(change.address))
        except (HeaderError, AddressError) as exc:
            refused.append(f"{type(change).__name__}: {exc}")
    if message is not None:
        transaction.content = bytes(message)
    return refused


def _edit(message: Message, change: AddHeader | InsertHeader | ChangeHeader | ReplaceBody) -> None:
    if isinstance(change, AddHeader):
        message.add(change.name, change.value)
    elif isinstance(change, InsertHeader):
        message.insert(change.index, change.name, change.value)
    elif isinstance(change, ChangeHeader):
        message.change(change.name, change.index, change.value)
    else:
        message.replace_body(change.body)


def _unbracket(address: str) -> str:
    address = address.strip()
    return address[1:-1] if address.startswith("<") and address.endswith(">") else address


def _address(address: str) -> str:
    """A milter's address without angle brackets, checked as a mailbox ("" stays the null reverse-path)."""
    address = _unbracket(address)
    if not address:
        return ""
    return str(parse_mailbox(address, forbid_routing=False))


def _add_recipient(transaction: Transaction, address: str) -> None:
    if not address:
        raise HeaderError("an empty recipient address")
    if any(given.lower() == address.lower() for given, _ in transaction.accepted):
        return
    transaction.accepted.append((address, (address,)))
    transaction.rcpt_tos.append(address)


def _delete_recipient(transaction: Transaction, address: str) -> None:
    """The recipient as given at RCPT TO (which a milter saw) goes, with every address it expanded to."""
    wanted = address.lower()
    transaction.accepted[:] = [(given, targets) for given, targets in transaction.accepted
                               if given.lower() != wanted]
    transaction.rcpt_tos[:] = [given for given in transaction.rcpt_tos if given.lower() != wanted]
