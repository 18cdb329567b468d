"""The message as Sieve tests see it: decoded header values (RFC 5228 §5.7), address parts (§2.7.4, RFC 5233),
body parts (RFC 5173) and dates (RFC 5260), each computed once per message and shared by every script that runs
on it (global before, the user's, global after).
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from functools import cached_property

SEPARATOR = "+"  # RFC 5233 §4: the subaddress separator (the same as the directory's recipient delimiter)


def decode_header(raw: str) -> str:
    """A header value unfolded and with its RFC 2047 encoded words decoded (RFC 5228 §2.7.2)."""
    unfolded = raw.replace("\r\n", "").replace("\n", "").strip()
    try:
        return str(email.header.make_header(email.header.decode_header(unfolded)))
    except (ValueError, LookupError, UnicodeError):
        return unfolded


def address_part(address: str, part: str) -> str | None:
    """One part of an address (":all", ":localpart", ":domain", ":user", ":detail"); None where it has none
    (RFC 5233 §4: :detail of an address without a separator does not match at all)."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    if part == "user":
        return local.partition(SEPARATOR)[0]
    if part == "detail":
        user, sep, detail = local.partition(SEPARATOR)
        return detail if sep else None
    return address


@dataclass
class MailView:
    """One message and its envelope (for the ``envelope`` test: the sender and this recipient)."""

    data: bytes
    mail_from: str
    rcpt: str
    original_rcpt: str

    @cached_property
    def parsed(self) -> Message:
        return email.message_from_bytes(self.data, policy=email.policy.compat32)

    def headers(self, name: str) -> list[str]:
        """The decoded values of every header field ``name`` (case-insensitive), in order."""
        return [decode_header(str(value)) for value in self.parsed.get_all(name, [])]

    def raw_headers(self, name: str) -> list[str]:
        return [str(value) for value in self.parsed.get_all(name, [])]

    def addresses(self, name: str) -> list[str]:
        """The addresses of an address header (RFC 5228 §5.1); groups give their members."""
        values = self.raw_headers(name)
        return [addr for _, addr in email.utils.getaddresses(values) if addr]

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def raw_body(self) -> str:
        """The body undecoded (RFC 5173 :raw): everything after the first empty line."""
        for separator in (b"\r\n\r\n", b"\n\n"):
            index = self.data.find(separator)
            if index >= 0:
                return self.data[index + len(separator):].decode("utf-8", "replace")
        return ""

    def body_parts(self, types: tuple[str, ...] | None) -> list[str]:
        """The decoded parts whose Content-Type matches ``types`` (RFC 5173 §5.2: "" matches every part, "text"
        a whole type, "text/html" exactly); None means :text, the text/* parts."""
        wanted = ("text",) if types is None else tuple(t.lower() for t in types)
        out = []
        for part in self.parsed.walk():
            ctype = part.get_content_type().lower()
            if part.is_multipart() and types is None:
                continue
            if not any(t == "" or t == ctype or ("/" not in t and ctype.split("/")[0] == t) for t in wanted):
                continue
            if part.is_multipart():
                out.append("")
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "us-ascii"
            try:
                out.append(payload.decode(charset, "replace"))
            except LookupError:
                out.append(payload.decode("utf-8", "replace"))
        return out

    def date(self, name: str) -> datetime | None:
        """The first ``name`` header as a date (RFC 5260 §4: an unparsable date makes the test false)."""
        values = self.raw_headers(name)
        if not values:
            return None
        try:
            return email.utils.parsedate_to_datetime(decode_header(values[0]))
        except (TypeError, ValueError, IndexError):
            return None
