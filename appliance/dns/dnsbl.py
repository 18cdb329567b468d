"""The DNS name a DNS blocklist is asked under (RFC 5782), for the screening of clients and for the egress
pool's own addresses alike."""

from __future__ import annotations

import ipaddress


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
