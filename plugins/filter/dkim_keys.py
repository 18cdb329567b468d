"""Filters of the DKIM keys the roles make on the controller (mailfleet.fleet.dkim_keys)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

ALGORITHMS = ("rsa", "ed25519")
# A selector is one DNS label of <selector>._domainkey.<domain> (RFC 6376 §3.1), kept to letters, digits, '-'.
_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def dkim_keys(domains: Iterable[str], selectors: Mapping[str, str], secrets_dir: str) -> list[dict[str, str]]:
    """One key per domain and algorithm: {domain, selector, algorithm, file}, the file being
    <secrets_dir>/dkim/<domain>/<selector>.pem on the controller."""
    unknown = sorted(set(selectors) - set(ALGORITHMS))
    if unknown or not selectors:
        raise AnsibleFilterError(f"mailfleet dkim: appliance_dkim_selectors: {unknown or 'empty'}: give a selector "
                                 f"for each of {', '.join(ALGORITHMS)}")
    for algorithm, selector in selectors.items():
        if not _SELECTOR.match(str(selector)):
            raise AnsibleFilterError(f"mailfleet dkim: appliance_dkim_selectors.{algorithm}: {selector!r} is not a "
                                     "DNS label (letters, digits and '-')")
    if len(set(map(str, selectors.values()))) != len(selectors):
        raise AnsibleFilterError("mailfleet dkim: appliance_dkim_selectors: each algorithm needs its own selector")
    root = str(secrets_dir).rstrip("/")
    return [{"domain": str(domain).lower(), "selector": str(selectors[algorithm]), "algorithm": algorithm,
             "file": f"{root}/dkim/{str(domain).lower()}/{selectors[algorithm]}.pem"}
            for domain in sorted(domains) for algorithm in ALGORITHMS if algorithm in selectors]


class FilterModule:
    """DKIM key filters of the appliance role."""

    def filters(self) -> dict[str, Any]:
        return {"dkim_keys": dkim_keys}
