"""Filters that derive the fleet's topology from inventory groups and gathered facts, in one place.

Every cross-host fact the roles need (who delivers where, who may relay) is an address of some host:
its `appliance_address` when the inventory sets one, else the address of its default route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


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


def mailfleet_addresses(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[str]:
    """Addresses of `hosts`, in inventory order, without repeats."""
    out: list[str] = []
    for host in hosts:
        addr = _address(host, hostvars)
        if addr not in out:
            out.append(addr)
    return out


def mailfleet_hostports(hosts: Iterable[str], hostvars: Mapping[str, Any], port: int = 25) -> list[str]:
    """"address:port" for each host, with IPv6 in brackets as mailfleet.yml expects."""
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in mailfleet_addresses(hosts, hostvars)]


def mailfleet_networks(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[str]:
    """Single-address CIDRs (/32, /128) for each host: a relay whitelist."""
    return [str(ipaddress.ip_network(a)) for a in mailfleet_addresses(hosts, hostvars)]


def mailfleet_domain_hosts(hosts: Iterable[str], hostvars: Mapping[str, Any],
                           key: str = "primary_domains") -> dict[str, list[str]]:
    """Map each domain listed in the hosts' `key` variable to the hosts that list it."""
    table: dict[str, list[str]] = {}
    for host in hosts:
        for domain in hostvars[host].get(key) or []:
            table.setdefault(str(domain), []).append(host)
    return table


def mailfleet_routes(domains: Iterable[str], candidates: Iterable[str], hostvars: Mapping[str, Any],
                     overrides: Mapping[str, list[str]] | None = None,
                     key: str = "primary_domains") -> dict[str, list[str]]:
    """domain -> ["host:port", ...]: the override when given, else the candidates whose `key` lists it."""
    owners = mailfleet_domain_hosts(candidates, hostvars, key)
    overrides = overrides or {}
    return {str(d): list(overrides[d]) if d in overrides else mailfleet_hostports(owners.get(d, []), hostvars)
            for d in domains}


def mailfleet_domain_table(routes: Mapping[str, list[str]], key: str,
                           extra_key: str | None = None,
                           extra: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{domain: {key: hosts[, extra_key: extra[domain]]}}: the domains: table of a mailfleet.yml section."""
    table: dict[str, dict[str, Any]] = {}
    for domain, hosts in routes.items():
        entry: dict[str, Any] = {key: list(hosts)}
        if extra_key and extra and extra.get(domain):
            entry[extra_key] = list(extra[domain])
        table[domain] = entry
    return table


ROLE_GROUPS = ("primary", "backup_mx", "incoming_gateway", "outgoing_gateway")


def _hostname(host: str, hostvars: Mapping[str, Any]) -> str:
    return str(hostvars[host].get("appliance_hostname") or host).rstrip(".")


def _role_domains(host: str, hostvars: Mapping[str, Any], role: str, all_domains: list[str]) -> list[str]:
    """Domains `role` serves on `host`: what the role contributed in this run, else its inventory
    variable, else its default (every primary domain)."""
    hv = hostvars[host]
    contribution = hv.get(f"__{role}_contribution")
    if contribution:
        return list(contribution["config"][role]["domains"])
    configured = hv.get(f"{role}_domains")
    return [str(d) for d in configured] if configured else list(all_domains)


def mailfleet_fleet(groups: Mapping[str, list[str]], hostvars: Mapping[str, Any]) -> dict[str, Any]:
    """The fleet seen from DNS: per host its name, address and roles; per domain its MX hosts and senders."""
    members: dict[str, list[str]] = {}
    for role in ROLE_GROUPS:
        for host in groups.get(role, []):
            members.setdefault(host, []).append(role)
    primaries = groups.get("primary", [])
    owners = mailfleet_domain_hosts(primaries, hostvars)
    domains = sorted(owners)
    fleet: dict[str, Any] = {"hosts": {}, "domains": {}}
    for host, roles in members.items():
        address = _address(host, hostvars)
        fleet["hosts"][host] = {"name": _hostname(host, hostvars), "address": address, "roles": roles,
                                "reverse": ipaddress.ip_address(address).reverse_pointer}
    for domain in domains:
        front = [h for h in groups.get("incoming_gateway", [])
                 if domain in _role_domains(h, hostvars, "incoming_gateway", domains)] or owners[domain]
        backup = [h for h in groups.get("backup_mx", [])
                  if domain in _role_domains(h, hostvars, "backup_mx", domains) and h not in front]
        senders = list(groups.get("outgoing_gateway", [])) or owners[domain]
        fleet["domains"][domain] = {"front": front, "backup": backup, "senders": senders,
                                    "primaries": owners[domain]}
    return fleet


def mailfleet_dns_records(domain: str, fleet: Mapping[str, Any], settings: Mapping[str, Any]) -> list[dict]:
    """The records `domain` needs, as {name, type, value} with names relative to the zone ('@' = apex).

    MX: the front hosts (incoming gateways, else the primaries) at the lowest preference, the backup MX
    hosts higher; A/AAAA for every fleet host named inside the zone; SPF with exactly the hosts that send
    to the world; DMARC; MTA-STS (RFC 8461 §3.1) and TLS-RPT (RFC 8460 §3) TXT records.
    """
    hosts = fleet["hosts"]
    info = fleet["domains"][domain]
    zone = domain.rstrip(".")
    records: list[dict] = []

    def fqdn(host: str) -> str:
        return hosts[host]["name"] + "."

    for host in info["front"]:
        records.append({"name": "@", "type": "MX", "value": f"{settings['mx_preference']} {fqdn(host)}"})
    for host in info["backup"]:
        records.append({"name": "@", "type": "MX", "value": f"{settings['backup_mx_preference']} {fqdn(host)}"})
    for entry in sorted(hosts.values(), key=lambda e: e["name"]):
        name = entry["name"]
        if name == zone or name.endswith("." + zone):
            label = "@" if name == zone else name[: -len(zone) - 1]
            rtype = "AAAA" if ":" in entry["address"] else "A"
            records.append({"name": label, "type": rtype, "value": entry["address"]})
    mechanisms = " ".join(("ip6:" if ":" in hosts[h]["address"] else "ip4:") + hosts[h]["address"]
                          for h in info["senders"] if h in hosts)
    records.append({"name": "@", "type": "TXT", "value": f'"v=spf1 {mechanisms} {settings["spf_all"]}"'})
    records.append({"name": "_dmarc", "type": "TXT",
                    "value": f'"v=DMARC1; p={settings["dmarc_policy"]}; rua=mailto:{settings["dmarc_rua"]}@{zone}"'})
    policy_id = mailfleet_mta_sts_id(mailfleet_mta_sts_policy(domain, fleet, settings))
    records.append({"name": "_mta-sts", "type": "TXT", "value": f'"v=STSv1; id={policy_id}"'})
    records.append({"name": "_smtp._tls", "type": "TXT",
                    "value": f'"v=TLSRPTv1; rua=mailto:{settings["tlsrpt_rua"]}@{zone}"'})
    return records


def mailfleet_mta_sts_policy(domain: str, fleet: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The MTA-STS policy file (RFC 8461 §3.2) served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt."""
    info = fleet["domains"][domain]
    lines = ["version: STSv1", f"mode: {settings['mta_sts_mode']}"]
    lines += [f"mx: {fleet['hosts'][h]['name']}" for h in info["front"] + info["backup"]]
    lines.append(f"max_age: {settings['mta_sts_max_age']}")
    return "\r\n".join(lines) + "\r\n"


def mailfleet_mta_sts_id(policy: str) -> str:
    """Policy id that changes exactly when the policy does (so a rerun changes nothing)."""
    import hashlib

    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def mailfleet_rrsets(records: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Group records into RRsets ({name, type, values}) for RFC 2136 updates, addresses first: BIND's
    integrity check refuses an MX whose target has no A/AAAA record yet."""
    sets: dict[tuple[str, str], list[str]] = {}
    for r in records:
        sets.setdefault((r["name"], r["type"]), []).append(r["value"])
    ordered = sorted(sets.items(), key=lambda kv: kv[0][1] not in ("A", "AAAA"))
    return [{"name": n, "type": t, "values": v} for (n, t), v in ordered]


class FilterModule:
    """Mailfleet topology filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "mailfleet_addresses": mailfleet_addresses,
            "mailfleet_hostports": mailfleet_hostports,
            "mailfleet_networks": mailfleet_networks,
            "mailfleet_domain_hosts": mailfleet_domain_hosts,
            "mailfleet_routes": mailfleet_routes,
            "mailfleet_domain_table": mailfleet_domain_table,
            "mailfleet_fleet": mailfleet_fleet,
            "mailfleet_dns_records": mailfleet_dns_records,
            "mailfleet_mta_sts_policy": mailfleet_mta_sts_policy,
            "mailfleet_rrsets": mailfleet_rrsets,
        }
