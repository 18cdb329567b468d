"""Filters of the outgoing_gateway role's egress pool (mailfleet.fleet.egress_entry, egress_cidr)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def _address(entry: Mapping[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(entry["address"]))
    except (KeyError, TypeError, ValueError):
        raise AnsibleFilterError(f"outgoing_gateway_egress: {entry!r}: address is missing or not an IP address") \
            from None


def egress_entry(entry: Mapping[str, Any], default_helo: str) -> dict[str, str]:
    """The mailfleet.yml form of one egress address, {address, helo}: the HELO name defaults to the host's."""
    helo = str(entry.get("helo") or default_helo).rstrip(".")
    return {"address": str(_address(entry)), "helo": helo}


def egress_cidr(entry: Mapping[str, Any]) -> str:
    """"address/prefix" as ip-address(8) adds it: a host route (/32, /128) unless the entry gives a prefix."""
    address = _address(entry)
    prefix = entry.get("prefix")
    prefix = address.max_prefixlen if prefix in (None, "") else prefix
    try:
        ipaddress.ip_interface(f"{address}/{int(prefix)}")
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"outgoing_gateway_egress: {address}: prefix {prefix!r} is not a prefix length "
                                 f"(0 to {address.max_prefixlen})") from None
    return f"{address}/{int(prefix)}"


class FilterModule:
    """Egress pool filters of the outgoing_gateway role."""

    def filters(self) -> dict[str, Any]:
        return {"egress_entry": egress_entry, "egress_cidr": egress_cidr}
