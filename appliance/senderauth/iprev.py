"""iprev (RFC 8601 §3): the client's forward-confirmed reverse DNS.

The PTR names of the client's address are looked up, then each name's addresses of the same family; the check
passes when one of them is the client's address.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from .resolver import Lookups, TempError

# A PTR set larger than this is looked at no further (RFC 8601 §3 leaves the bound to the verifier; Postfix's
# reverse_client_hostname check and OpenDMARC's stop at a handful too).
MAX_NAMES = 10


@dataclass(frozen=True, slots=True)
class IprevResult:
    result: str  # pass fail temperror permerror
    name: str | None  # the forward-confirmed name (pass), else None
    reason: str = ""


async def check(lookups: Lookups, ip: str) -> IprevResult:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return IprevResult("permerror", None, f"{ip!r} is not an IP address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    try:
        names = (await lookups.ptr(str(address)))[:MAX_NAMES]
    except TempError as exc:
        return IprevResult("temperror", None, str(exc))
    if not names:
        return IprevResult("fail", None, "no PTR record")
    rdtype = "A" if address.version == 4 else "AAAA"
    answers = await asyncio.gather(*(lookups.addresses(name, rdtype) for name in names), return_exceptions=True)
    errors = []
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, TempError):
            errors.append(str(answer))
        elif isinstance(answer, BaseException):
            raise answer
        elif any(ipaddress.ip_address(found) == address for found in answer):
            return IprevResult("pass", name)
    if errors:
        return IprevResult("temperror", None, errors[0])
    return IprevResult("fail", None, f"{', '.join(names)} does not resolve to {address}")
