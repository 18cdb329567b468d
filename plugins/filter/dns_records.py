"""Filters of the dns_records role (mailfleet.fleet.dns_records_*): the DNS records, MTA-STS policy and
RFC 2136 RRsets of a mail domain, rendered from the fleet's topology (the mailfleet.fleet.topology filter)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any


def dns_records_of(domain: str, fleet: Mapping[str, Any], settings: Mapping[str, Any]) -> list[dict]:
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
    policy_id = _mta_sts_id(dns_records_mta_sts_policy(domain, fleet, settings))
    records.append({"name": "_mta-sts", "type": "TXT", "value": f'"v=STSv1; id={policy_id}"'})
    records.append({"name": "_smtp._tls", "type": "TXT",
                    "value": f'"v=TLSRPTv1; rua=mailto:{settings["tlsrpt_rua"]}@{zone}"'})
    return records


def dns_records_mta_sts_policy(domain: str, fleet: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The MTA-STS policy file (RFC 8461 §3.2) served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt."""
    info = fleet["domains"][domain]
    lines = ["version: STSv1", f"mode: {settings['mta_sts_mode']}"]
    lines += [f"mx: {fleet['hosts'][h]['name']}" for h in info["front"] + info["backup"]]
    lines.append(f"max_age: {settings['mta_sts_max_age']}")
    return "\r\n".join(lines) + "\r\n"


def _mta_sts_id(policy: str) -> str:
    """Policy id that changes exactly when the policy does (so a rerun changes nothing)."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def dns_records_rrsets(records: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Group records into RRsets ({name, type, values}) for RFC 2136 updates, addresses first: BIND's
    integrity check refuses an MX whose target has no A/AAAA record yet."""
    sets: dict[tuple[str, str], list[str]] = {}
    for r in records:
        sets.setdefault((r["name"], r["type"]), []).append(r["value"])
    ordered = sorted(sets.items(), key=lambda kv: kv[0][1] not in ("A", "AAAA"))
    return [{"name": n, "type": t, "values": v} for (n, t), v in ordered]


class FilterModule:
    """DNS rendering filters of the dns_records role."""

    def filters(self) -> dict[str, Any]:
        return {
            "dns_records_of": dns_records_of,
            "dns_records_mta_sts_policy": dns_records_mta_sts_policy,
            "dns_records_rrsets": dns_records_rrsets,
        }
