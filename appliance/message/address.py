"""Envelope address parsing shared by the SMTP server, the policy and the tests.

The relay decision is taken on the *final* domain only, so the classic tricks must be seen for what they are:
source routes (`<@relay:user@dom>`, RFC 5321 §4.1.1.3 / Appendix C) are stripped as the RFC asks, while the
percent hack, bang paths and an '@' inside a quoted local part ("sender-specified routing") are refused
outright, as Postfix does by default (allow_untrusted_routing = no).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
                       r"(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?<!-)$")


class AddressError(ValueError):
    """An envelope address we refuse; `enhanced` and `text` make the SMTP reply."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text

    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(frozen=True)
class Mailbox:
    local: str  # unquoted local part, case kept
    domain: str  # lower case, no trailing dot; IDNA kept as given (SMTPUTF8)

    def __str__(self) -> str:
        local = self.local if _DOT_ATOM.match(self.local) else '"' + self.local.replace("\\", "\\\\").replace(
            '"', '\\"') + '"'
        return f"{local}@{self.domain}"


def parse_mailbox(address: str, forbid_routing: bool = True) -> Mailbox:
    """Parse the address of MAIL FROM / RCPT TO (already without the angle brackets).

    `forbid_routing` (recipients) refuses the percent hack and friends; senders may legally carry a '%'.
    """
    text = address.strip()
    if text.startswith("@"):
        # RFC 5321 §4.1.1.3: a source route "@a,@b:user@dom" SHOULD be ignored; only the mailbox counts.
        _, colon, rest = text.partition(":")
        if not colon:
            raise AddressError(501, "5.1.3", f"bad source route in {address!r}")
        text = rest
    if text.startswith('"'):
        local, domain = _split_quoted(text, address)
    else:
        local, at, domain = text.rpartition("@")
        if not at:
            raise AddressError(501, "5.1.3", f"{address!r} is not a mailbox (local@domain)")
        if not _DOT_ATOM.match(local):
            raise AddressError(501, "5.1.3", f"bad local part in {address!r}")
    if not local or len(local) > 64:
        raise AddressError(501, "5.1.3", f"local part of {address!r} is empty or longer than 64 octets")
    if forbid_routing and any(c in local for c in "%!@"):
        raise AddressError(550, "5.7.1", f"sender-specified routing ('%', '!' or '@' in the local part) is not "
                                         f"allowed: {address!r}")
    return Mailbox(local, _domain(domain, address))


def _split_quoted(text: str, original: str) -> tuple[str, str]:
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            break
        if ord(c) < 32 or ord(c) == 127:
            raise AddressError(501, "5.1.3", f"control character in the quoted local part of {original!r}")
        out.append(c)
        i += 1
    else:
        raise AddressError(501, "5.1.3", f"unterminated quoted local part in {original!r}")
    rest = text[i + 1:]
    if not rest.startswith("@"):
        raise AddressError(501, "5.1.3", f"{original!r} is not a mailbox (local@domain)")
    return "".join(out), rest[1:]


def _domain(domain: str, original: str) -> str:
    if domain.startswith("["):
        # RFC 5321 §4.1.3 address literals: we never route to them, whoever asks.
        inner = domain[1:-1] if domain.endswith("]") else domain[1:]
        try:
            ipaddress.ip_address(inner[5:] if inner.lower().startswith("ipv6:") else inner)
        except ValueError:
            raise AddressError(501, "5.1.3", f"bad address literal in {original!r}") from None
        raise AddressError(550, "5.1.2", f"address literals are not accepted here: {original!r}")
    name = domain.rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 255 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise AddressError(501, "5.1.2", f"bad domain in {original!r}")
    return name
