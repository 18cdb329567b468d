"""What a DNS blocklist is asked (RFC 5782) and what its answers mean, for the screening of clients and for the
egress pool's own addresses alike; each caller turns the answers into its own verdict."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from appliance.config.dnsbl_codes import ERRORS, LISTINGS


def query_name(ip: str, zone: str) -> str:
    """The name whose A records say whether ``ip`` is listed in ``zone`` (RFC 5782 §2.1, §2.4); an IPv4-mapped
    IPv6 address is asked as the IPv4 address it carries."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        labels = reversed(str(address).split("."))
    else:
        labels = reversed(address.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.rstrip(".")


def split_answers(texts: Iterable[str]) -> tuple[tuple[ipaddress.IPv4Address, ...], tuple[str, ...]]:
    """(listings, refusals) of a zone's A records: a listing is an address in 127.0.0.0/8 (RFC 5782 §2.1);
    127.255.255.0/24 is the zone's error code (Spamhaus: "query refused"), and anything outside 127.0.0.0/8 (a
    resolver that rewrites NXDOMAIN) or not an IPv4 address is an error too, never a listing."""
    listings: list[ipaddress.IPv4Address] = []
    refusals: list[str] = []
    for text in texts:
        try:
            code = ipaddress.IPv4Address(text)
        except ValueError:
            refusals.append(text)
            continue
        if code in LISTINGS and code not in ERRORS:
            listings.append(code)
        else:
            refusals.append(text)
    return tuple(listings), tuple(refusals)
