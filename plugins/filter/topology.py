"""Filters that derive the fleet's topology from inventory groups and gathered facts, in one place.

Every cross-host fact the roles need (who delivers where, who may relay, who answers for a domain in
DNS) is an address of some host: its `appliance_address` when the inventory sets one, else the address
of its default route. Rendering these facts (mailfleet.yml sections, DNS records) is the roles' part.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

ROLE_GROUPS = ("primary", "backup_mx", "incoming_gateway", "outgoing_gateway")


def _address(host: str, hostvars: Mapping[str, Any]) -> str:
    """The one address other fleet members use to reach `host`."""
    try:
        hv = hostvars[host]
    except KeyError:
        raise AnsibleFilterError(f"mailfleet topology: {host} is not in the inventory") from None
    override = hv.get("appliance_address")
    if override:
        return str(override)
    facts = hv.get("ansible_facts") or {}
    for key in ("default_ipv4", "default_ipv6"):
        found = (facts.get(key) or {}).get("address")
        if found:
            return str(found)
    # A host without a default route (an isolated network) still has its interface addresses.
    for key in ("all_ipv4_addresses", "all_ipv6_addresses"):
        for found in facts.get(key) or []:
            if not ipaddress.ip_address(found).is_link_local:
                return str(found)
    raise AnsibleFilterError(
        f"mailfleet topology: {host} has no known address (gather facts on it, or set appliance_address)")


def addresses(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[str]:
    """Addresses of `hosts`, in inventory order, without repeats."""
    out: list[str] = []
    for host in hosts:
        addr = _address(host, hostvars)
        if addr not in out:
            out.append(addr)
    return out


def hostports(hosts: Iterable[str], hostvars: Mapping[str, Any], port: int = 25) -> list[str]:
    """"address:port" for each host, with IPv6 in brackets as mailfleet.yml expects."""
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses(hosts, hostvars)]


def networks(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[str]:
    """Single-address CIDRs (/32, /128) for each host: a relay whitelist."""
    return [str(ipaddress.ip_network(a)) for a in addresses(hosts, hostvars)]


def domain_hosts(hosts: Iterable[str], hostvars: Mapping[str, Any],
                 key: str = "primary_domains") -> dict[str, list[str]]:
    """Map each domain listed in the hosts' `key` variable to the hosts that list it."""
    table: dict[str, list[str]] = {}
    for host in hosts:
        for domain in hostvars[host].get(key) or []:
            table.setdefault(str(domain), []).append(host)
    return table


def routes(domains: Iterable[str], candidates: Iterable[str], hostvars: Mapping[str, Any],
           overrides: Mapping[str, list[str]] | None = None,
           key: str = "primary_domains") -> dict[str, list[str]]:
    """domain -> ["host:port", ...]: the override when given, else the candidates whose `key` lists it."""
    owners = domain_hosts(candidates, hostvars, key)
    overrides = overrides or {}
    return {str(d): list(overrides[d]) if d in overrides else hostports(owners.get(d, []), hostvars)
            for d in domains}


VERIFY_MODES = ("list", "callout", "none")


def recipients(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> dict[str, list[str]]:
    """domain -> every address the Mailfleet primaries among `hosts` accept for it: their users and aliases, or
    "@domain" alone for a domain with a catch-all (it accepts every address). A foreign primary (primary_foreign)
    keeps its users to itself: its domains are verified by callout."""
    table: dict[str, set[str]] = {}
    catch_alls: set[str] = set()
    for host in hosts:
        hv = hostvars[host]
        if hv.get("primary_foreign"):
            continue
        addresses = [str(user["address"]) for user in hv.get("primary_users") or []]
        addresses += [str(alias) for alias in hv.get("primary_aliases") or {}]
        for address in addresses:
            table.setdefault(address.rpartition("@")[2].lower(), set()).add(address.lower())
        catch_alls.update(str(domain).lower() for domain in hv.get("primary_catch_all") or {})
    for domain in catch_alls:
        table[domain] = {f"@{domain}"}
    return {domain: sorted(found) for domain, found in sorted(table.items())}


def forwarders(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[str]:
    """The Mailfleet primaries among `hosts` with an alias to an address outside every fleet domain: they forward
    mail to the world, which SRS rewrites (and whose bounces the hosts in front must route back)."""
    hosts = list(hosts)
    fleet_domains = {d.lower() for d in domain_hosts(hosts, hostvars)}
    found = []
    for host in hosts:
        hv = hostvars[host]
        if hv.get("primary_foreign"):
            continue
        targets = [str(t) for ts in (hv.get("primary_aliases") or {}).values() for t in (ts or [])]
        if any(t.rpartition("@")[2].lower() not in fleet_domains for t in targets):
            found.append(host)
    return found


def verified_domain_table(routes: Mapping[str, list[str]], key: str, derived: Mapping[str, list[str]],
                          overridden: Iterable[str] = (), modes: Mapping[str, str] | None = None,
                          extra: Mapping[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """{domain: {key: hosts, verify: mode[, recipients: [...]]}}: the domains: table of a backup_mx or
    incoming_gateway section with recipient verification.

    A domain's list is what the primaries it is routed to accept (`derived`, from `recipients`; none for a domain
    whose route is `overridden`) plus its `extra` addresses; its mode is the one `modes` gives, else list when it
    has a list and callout when not (a foreign primary, a destination outside the fleet)."""
    modes, extra, skip = modes or {}, extra or {}, set(overridden)
    table: dict[str, dict[str, Any]] = {}
    for domain, hosts in routes.items():
        listed = sorted({str(a).lower() for a in ([] if domain in skip else derived.get(domain, []))}
                        | {str(a).lower() for a in extra.get(domain) or []})
        mode = str(modes.get(domain) or ("list" if listed else "callout"))
        if mode not in VERIFY_MODES:
            raise AnsibleFilterError(f"mailfleet recipients: {domain}: verification {mode!r} is not one of "
                                     f"{', '.join(VERIFY_MODES)}")
        if mode == "list" and not listed:
            raise AnsibleFilterError(f"mailfleet recipients: {domain}: verification list, but no primary of the "
                                     "fleet stores it with users, aliases or a catch-all, and no extra recipient "
                                     "is given (give them, or use callout)")
        entry: dict[str, Any] = {key: list(hosts), "verify": mode}
        if mode == "list":
            entry["recipients"] = listed
        table[domain] = entry
    return table


def _hostname(host: str, hostvars: Mapping[str, Any]) -> str:
    return str(hostvars[host].get("appliance_hostname") or host).rstrip(".")


def _role_domains(host: str, hostvars: Mapping[str, Any], role: str, owners: Mapping[str, list[str]]) -> list[str]:
    """Domains `role` serves on `host`: its inventory variable (`<role>_domains`), else the role's
    default: every domain a primary other than `host` stores."""
    configured = hostvars[host].get(f"{role}_domains")
    if configured:
        return [str(d) for d in configured]
    return [d for d, hosts in owners.items() if any(h != host for h in hosts)]


def _egress(host: str, hostvars: Mapping[str, Any]) -> list[dict[str, str]]:
    """The egress addresses of an outgoing gateway (`outgoing_gateway_egress`), each with its HELO name (the
    host's name when the entry gives none) and reverse name: SPF lists them, their PTR must name the HELO."""
    found = []
    for entry in hostvars[host].get("outgoing_gateway_egress") or []:
        try:
            address = str(ipaddress.ip_address(str(entry["address"])))
        except (KeyError, TypeError, ValueError):
            raise AnsibleFilterError(f"mailfleet topology: {host}: outgoing_gateway_egress entry {entry!r} has no "
                                     "valid address") from None
        helo = str(entry.get("helo") or _hostname(host, hostvars)).rstrip(".")
        found.append({"address": address, "helo": helo,
                      "reverse": ipaddress.ip_address(address).reverse_pointer})
    return found


def topology(groups: Mapping[str, list[str]], hostvars: Mapping[str, Any]) -> dict[str, Any]:
    """The fleet seen from outside: per host its name, address, reverse name, roles and egress addresses; per domain the
    hosts in front (incoming gateways, else its primaries), its backup MX hosts, the hosts that send its
    mail to the world (outgoing gateways, else its primaries) and its primaries."""
    members: dict[str, list[str]] = {}
    for role in ROLE_GROUPS:
        for host in groups.get(role, []):
            members.setdefault(host, []).append(role)
    owners = domain_hosts(groups.get("primary", []), hostvars)
    fleet: dict[str, Any] = {"hosts": {}, "domains": {}}
    for host, roles in members.items():
        address = _address(host, hostvars)
        fleet["hosts"][host] = {"name": _hostname(host, hostvars), "address": address, "roles": roles,
                                "reverse": ipaddress.ip_address(address).reverse_pointer,
                                "egress": _egress(host, hostvars) if "outgoing_gateway" in roles else []}
    for domain in sorted(owners):
        front = [h for h in groups.get("incoming_gateway", [])
                 if domain in _role_domains(h, hostvars, "incoming_gateway", owners)] or owners[domain]
        backup = [h for h in groups.get("backup_mx", [])
                  if domain in _role_domains(h, hostvars, "backup_mx", owners) and h not in front]
        senders = list(groups.get("outgoing_gateway", [])) or owners[domain]
        fleet["domains"][domain] = {"front": front, "backup": backup, "senders": senders,
                                    "primaries": owners[domain]}
    return fleet


class FilterModule:
    """Mailfleet topology filters (mailfleet.fleet.<name>)."""

    def filters(self) -> dict[str, Any]:
        return {
            "addresses": addresses,
            "hostports": hostports,
            "networks": networks,
            "domain_hosts": domain_hosts,
            "routes": routes,
            "recipients": recipients,
            "forwarders": forwarders,
            "verified_domain_table": verified_domain_table,
            "topology": topology,
        }
