"""Where a policy domain wants its reports: the TLSRPT record at ``_smtp._tls.<domain>`` (RFC 8460 §3).

    tlsrpt-record = "v=TLSRPTv1" 1*(field-delim tlsrpt-field) [field-delim]
    field-delim   = *WSP ";" *WSP
    tlsrpt-rua    = "rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)

A pure parser (text in, the URIs or None out) apart from the lookup, so that it is tested by itself.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

VERSION = "v=TLSRPTv1"
_ESCAPED_COMMA = re.compile("%2c", re.IGNORECASE)
_FIELD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,31})=(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Rua:
    """The report destinations of one domain: mailbox addresses and https: URLs."""

    mailto: tuple[str, ...] = ()
    https: tuple[str, ...] = ()


def select_record(texts: Iterable[str]) -> str | None:
    """RFC 8460 §3: records that do not start with the version are discarded; anything but exactly one left
    means the domain does not take reports."""
    found = [t for t in texts if t.startswith(VERSION) and t[len(VERSION):].lstrip(" \t").startswith(";")]
    return found[0] if len(found) == 1 else None


def parse_record(text: str) -> Rua | None:
    """The destinations of one TLSRPT record; None when it is malformed or names none this host can use.

    URIs of other schemes are skipped (§3: "rua" takes mailto: and https:); a mailto: URI's query (?subject=)
    is ignored, its %-escapes are decoded and a %2C-separated list gives several addresses (RFC 6068 §2).
    """
    parts = [p.strip(" \t") for p in text.split(";")]
    if parts[0] != VERSION:
        return None
    if parts and parts[-1] == "":
        parts.pop()  # a trailing field-delim
    uris: list[str] | None = None
    for part in parts[1:]:
        match = _FIELD.match(part)
        if match is None:
            return None
        name, value = match.groups()
        if name == "rua":
            if uris is not None:
                return None  # two rua fields: an ambiguous record
            uris = [u.strip(" \t") for u in value.split(",")]
    if not uris or any(not u for u in uris):
        return None
    mailto: list[str] = []
    https: list[str] = []
    for uri in uris:
        scheme, colon, rest = uri.partition(":")
        if not colon:
            return None
        if scheme.lower() == "mailto":
            addresses = (unquote(x).strip() for x in _ESCAPED_COMMA.split(rest.split("?", 1)[0]))
            mailto += [a for a in addresses if _mailbox(a)]
        elif scheme.lower() == "https" and rest.startswith("//") and len(rest) > 2:
            https.append(uri)
    if not mailto and not https:
        return None
    return Rua(tuple(dict.fromkeys(mailto)), tuple(dict.fromkeys(https)))


def _mailbox(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and "." in domain and not any(c in address for c in " <>,;\r\n\t"))


async def lookup_rua(txt: Callable[[str], Awaitable[list[str]]], domain: str) -> Rua | None:
    """The domain's destinations through ``txt`` (a resolver's TXT lookup); None when it takes no reports.
    A temporary DNS failure propagates: the domain is tried again at the next round."""
    record = select_record(await txt(f"_smtp._tls.{domain}"))
    return parse_record(record) if record is not None else None
