"""The collection's recipient filters (plugins/filter/topology.py): each backed-up or forwarded domain's valid
recipients derived from the primary group, and the verification mode rendered for it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "filter"))
from topology import recipients, verified_domain_table  # noqa: E402

from appliance.config import parse_config  # noqa: E402

HOSTVARS = {
    "mail1": {"primary_domains": ["example.org", "catchall.example"],
              "primary_users": [{"address": "Alice@example.org"}, {"address": "bob@example.org"}],
              "primary_aliases": {"postmaster@example.org": ["alice@example.org"]},
              "primary_catch_all": {"catchall.example": "alice@example.org"}},
    "mail2": {"primary_domains": ["example.com"], "primary_users": [{"address": "carol@example.com"}]},
    "postfix": {"primary_domains": ["foreign.example"], "primary_foreign": True,
                "primary_users": [{"address": "dave@foreign.example"}]},
}


def test_users_aliases_and_catch_alls_of_mailfleet_primaries_are_the_recipients() -> None:
    assert recipients(["mail1", "mail2", "postfix"], HOSTVARS) == {
        "catchall.example": ["@catchall.example"],
        "example.com": ["carol@example.com"],
        "example.org": ["alice@example.org", "bob@example.org", "postmaster@example.org"],
    }


def test_the_table_lists_fleet_domains_and_calls_out_for_the_others() -> None:
    routes = {"example.org": ["10.0.0.1:25"], "foreign.example": ["10.0.0.3:25"], "example.com": ["192.0.2.9:25"],
              "catchall.example": ["10.0.0.1:25"]}
    table = verified_domain_table(routes, "destinations", recipients(list(HOSTVARS), HOSTVARS),
                                  overridden=["example.com"], extra={"example.org": ["New@example.org"]})
    assert table == {
        "example.org": {"destinations": ["10.0.0.1:25"], "verify": "list",
                        "recipients": ["alice@example.org", "bob@example.org", "new@example.org",
                                       "postmaster@example.org"]},
        "foreign.example": {"destinations": ["10.0.0.3:25"], "verify": "callout"},
        "example.com": {"destinations": ["192.0.2.9:25"], "verify": "callout"},  # its own destination: callout
        "catchall.example": {"destinations": ["10.0.0.1:25"], "verify": "list", "recipients": ["@catchall.example"]},
    }
    # What the role renders is what the service loads.
    doc = {"hostname": "gw.example.net", "roles": ["incoming_gateway"], "incoming_gateway": {"domains": table}}
    loaded = parse_config(yaml.safe_dump(doc), check_host=False).forward_domains
    assert loaded["example.org"].verify == "list" and "new@example.org" in loaded["example.org"].recipients
    assert loaded["foreign.example"].verify == "callout"


def test_a_mode_given_per_domain_wins_and_a_bad_one_is_named() -> None:
    routes = {"example.org": ["10.0.0.1:25"]}
    derived = recipients(["mail1"], HOSTVARS)
    assert verified_domain_table(routes, "primary_hosts", derived, modes={"example.org": "none"}) == {
        "example.org": {"primary_hosts": ["10.0.0.1:25"], "verify": "none"}}
    with pytest.raises(AnsibleFilterError, match="example.org: verification 'maybe' is not one of list, callout"):
        verified_domain_table(routes, "primary_hosts", derived, modes={"example.org": "maybe"})
    with pytest.raises(AnsibleFilterError, match="example.net: verification list, but no primary"):
        verified_domain_table({"example.net": ["x:25"]}, "primary_hosts", derived, modes={"example.net": "list"})
