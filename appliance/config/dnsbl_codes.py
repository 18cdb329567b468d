"""The syntax of screening.dnsbl.sites[].codes: which DNSBL return codes a site counts.

A code is written as
- an address, ``127.0.0.2``;
- a range, ``127.0.0.4-127.0.0.7``, or a network, ``127.0.1.0/24``;
- an octet pattern as Postfix's postscreen_dnsbl_sites writes it, ``127.0.[0..255].[2;3]``: each octet a
  number or a bracketed list of numbers and ``low..high`` ranges separated by ``;`` (list.dnswl.org's trust
  level is the last octet, its category the third).

Each becomes inclusive address ranges. RFC 5782 §2.1: return codes are addresses in 127.0.0.0/8, and
127.255.255.0/24 is where Spamhaus answers "query refused" (a public or unregistered resolver), never a
listing, so a code there is refused too.
"""

from __future__ import annotations

import ipaddress
import itertools
import re

from appliance.config.model import CodeRange

LISTINGS = ipaddress.IPv4Network("127.0.0.0/8")
ERRORS = ipaddress.IPv4Network("127.255.255.0/24")
MAX_RANGES = 4096  # what one pattern may expand into: 127.0.[0..255].[0..3] is 256
_OCTET = re.compile(r"^(?:\d{1,3}|\[[\d;. ]+\])$")


def parse_codes(text: str) -> tuple[CodeRange, ...]:
    """The ranges ``text`` stands for; ValueError with the reason when it is not a code of this syntax."""
    text = text.strip()
    if "[" in text:
        ranges = _pattern(text)
    elif "/" in text:
        try:
            network = ipaddress.IPv4Network(text, strict=True)
        except ValueError:
            raise ValueError(_EXPECTED) from None
        ranges = ((network.network_address, network.broadcast_address),)
    else:
        low, sep, high = text.partition("-")
        try:
            first = ipaddress.IPv4Address(low.strip())
            last = ipaddress.IPv4Address(high.strip()) if sep else first
        except ValueError:
            raise ValueError(_EXPECTED) from None
        if first > last:
            raise ValueError("the range ends before it starts")
        ranges = ((first, last),)
    for first, last in ranges:
        if first not in LISTINGS or last not in LISTINGS:
            raise ValueError("DNSBL return codes are in 127.0.0.0/8 (RFC 5782 §2.1)")
        if first <= ERRORS.broadcast_address and last >= ERRORS.network_address:
            raise ValueError("127.255.255.0/24 holds error codes (query refused), never listings")
    return ranges


_EXPECTED = ("not a return code (expected an address such as 127.0.0.2, a range 127.0.0.4-127.0.0.7, a network "
             "127.0.1.0/24 or a pattern 127.0.[0..255].[2;3])")


def _pattern(text: str) -> tuple[CodeRange, ...]:
    octets = _split_octets(text)
    if len(octets) != 4 or not all(_OCTET.match(octet) for octet in octets):
        raise ValueError(_EXPECTED)
    values = [_octet(octet) for octet in octets]
    # The last octet's runs stay ranges; the first three are enumerated.
    count = 1
    for runs in values[:3]:
        count *= sum(high - low + 1 for low, high in runs)
    count *= len(values[3])
    if count > MAX_RANGES:
        raise ValueError(f"the pattern stands for {count} ranges, more than {MAX_RANGES}")
    heads = itertools.product(*(_expand(runs) for runs in values[:3]))
    return tuple((_address(head, low), _address(head, high)) for head in heads for low, high in values[3])


def _split_octets(text: str) -> list[str]:
    """Split at the dots between octets, not at the ``..`` inside brackets."""
    octets, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "." and depth == 0:
            octets.append(current)
            current = ""
        else:
            current += char
    return [*octets, current]


def _octet(text: str) -> list[tuple[int, int]]:
    """An octet's values as merged runs (low, high)."""
    items = text[1:-1].split(";") if text.startswith("[") else [text]
    runs: list[tuple[int, int]] = []
    for item in items:
        low, sep, high = item.strip().partition("..")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(_EXPECTED)
        first = int(low)
        last = int(high) if sep else first
        if first > last or last > 255:
            raise ValueError(f"octet {item.strip()!r} is not a number or range within 0..255")
        runs.append((first, last))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(runs):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _expand(runs: list[tuple[int, int]]) -> list[int]:
    return [value for low, high in runs for value in range(low, high + 1)]


def _address(head: tuple[int, ...], last: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(".".join(map(str, (*head, last))))
