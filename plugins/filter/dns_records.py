"""Filters of the dns_records role (mailfleet.fleet.dns_records_*): the DNS records, MTA-STS policy and
RFC 2136 RRsets of a mail domain, rendered from the fleet's topology (the mailfleet.fleet.topology filter)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any


def dns_records_of(domain: str, fleet: Mapping[str, Any], settings: Mapping[str, Any]) -> list[dict]:
    """The records `domain` needs, as {name, type, value} with names relative to the zone ('@' = apex).

    MX: the front hosts (incoming gateways, else the primaries) at the lowest preference, the backup MX
    hosts higher; A/AAAA for every fleet host named inside the zone, and for the HELO name of every egress
    address inside it; SPF with exactly the hosts that send to the world and every egress address of theirs;
    DMARC; the DKIM key of each selector in settings["dkim"] ({domain, selector, record}); MTA-STS (RFC 8461
    §3.1) and TLS-RPT (RFC 8460 §3) TXT records.
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
    named = [(e["name"], e["address"]) for e in hosts.values()]
    named += [(egress["helo"], egress["address"]) for e in hosts.values() for egress in e.get("egress", [])
              if egress.get("helo")]
    for name, address in sorted(set(named)):
        if name == zone or name.endswith("." + zone):
            label = "@" if name == zone else name[: -len(zone) - 1]
            records.append({"name": label, "type": "AAAA" if ":" in address else "A", "value": address})
    sending: list[str] = []
    for host in (h for h in info["senders"] if h in hosts):
        for address in [hosts[host]["address"]] + [e["address"] for e in hosts[host].get("egress", [])]:
            if address not in sending:
                sending.append(address)
    mechanisms = " ".join(("ip6:" if ":" in a else "ip4:") + a for a in sending)
    records.append({"name": "@", "type": "TXT", "value": txt_strings(f"v=spf1 {mechanisms} {settings['spf_all']}")})
    for key in settings.get("dkim") or []:
        if str(key["domain"]).rstrip(".").lower() == zone.lower():
            records.append({"name": f"{key['selector']}._domainkey", "type": "TXT", "value": txt_strings(key["record"])})
    records.append({"name": "_dmarc", "type": "TXT",
                    "value": f'"v=DMARC1; p={settings["dmarc_policy"]}; rua=mailto:{settings["dmarc_rua"]}@{zone}"'})
    policy_id = _mta_sts_id(dns_records_mta_sts_policy(domain, fleet, settings))
    records.append({"name": "_mta-sts", "type": "TXT", "value": f'"v=STSv1; id={policy_id}"'})
    records.append({"name": "_smtp._tls", "type": "TXT",
                    "value": f'"v=TLSRPTv1; rua=mailto:{settings["tlsrpt_rua"]}@{zone}"'})
    return records


def txt_strings(text: str) -> str:
    """TXT record data as quoted character-strings of at most 255 octets each (RFC 1035 §3.3.14): a DKIM RSA
    key or a long SPF record is one record of several strings, which the reader joins (RFC 7208 §3.3, RFC 6376
    §3.6.2.2)."""
    data = text.encode()
    if any(c in data for c in b'"\\'):
        raise ValueError(f"TXT text {text!r} holds a quote or backslash")
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join(f'"{chunk.decode()}"' for chunk in chunks)


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
            "dns_records_txt_strings": txt_strings,
        }
