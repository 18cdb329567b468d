"""Mail address normalisation shared by the directory, the authenticator and the CLI.

Lookups are case-insensitive in BOTH parts of the address. RFC 5321 §2.4 lets the local part be
case-sensitive, but every Dovecot/Postfix deployment our users compare us with folds it, and a user who
types ``Alice@Example.org`` expects to reach ``alice@example.org``. We therefore store and compare the
lower-cased form everywhere.
"""

from __future__ import annotations

import re

_LOCAL_RE = re.compile(r"^[^\s@<>()\[\]\\,;:\"\x00-\x1f\x7f]+$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AddressError(ValueError):
    """An address or domain that cannot be stored; the message names it and says why."""


def normalize_domain(domain: str) -> str:
    """Return the lower-case ASCII (IDNA A-label) form of ``domain`` or raise AddressError."""
    raw = domain.strip().rstrip(".")
    if not raw:
        raise AddressError(f"domain {domain!r}: empty")
    try:
        ascii_form = raw.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise AddressError(f"domain {domain!r}: not a valid domain name ({exc})") from None
    if len(ascii_form) > 253:
        raise AddressError(f"domain {domain!r}: longer than 253 characters")
    labels = ascii_form.split(".")
    if len(labels) < 2:
        raise AddressError(f"domain {domain!r}: needs at least two labels (like example.org)")
    for label in labels:
        if not _LABEL_RE.match(label):
            raise AddressError(f"domain {domain!r}: label {label!r} is not letters, digits and inner hyphens")
    return ascii_form


def normalize_address(address: str) -> str:
    """Return ``local@domain`` lower-cased, or raise AddressError naming the problem."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, sep, domain = text.rpartition("@")
    if not sep:
        raise AddressError(f"address {address!r}: missing '@domain'")
    if not local:
        raise AddressError(f"address {address!r}: empty local part")
    if len(local.encode("utf-8")) > 64:
        raise AddressError(f"address {address!r}: local part longer than 64 octets (RFC 5321 §4.5.3.1.1)")
    if not _LOCAL_RE.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError(f"address {address!r}: local part {local!r} has characters not allowed here")
    return f"{local.lower()}@{normalize_domain(domain)}"


def domain_of(address: str) -> str:
    """Domain part of an already normalised address."""
    return address.rpartition("@")[2]
