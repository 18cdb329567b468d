"""The config model as the loader builds it: the reference file, the relay whitelist, errors in process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.config import ConfigError, parse_config


def test_reference_config_is_valid() -> None:
    reference = Path(__file__).resolve().parents[2] / "appliance" / "config" / "reference.yml"
    config = parse_config(reference.read_text(), check_host=False)
    assert config.roles == ("primary", "backup_mx", "incoming_gateway", "outgoing_gateway")
    assert config.backup_mx is not None and config.backup_mx.retry_schedule == (600, 600, 600, 86400)
    assert config.queue.lifetime == 5 * 86400


def test_relay_whitelist_matches_ipv4_and_ipv6_only_inside() -> None:
    config = parse_config(yaml.safe_dump({
        "hostname": "gw.example.net", "roles": ["outgoing_gateway"],
        "outgoing_gateway": {"relay_networks": ["192.0.2.0/24", "2001:db8:1::/48"]}}), check_host=False)
    gateway = config.outgoing_gateway
    assert gateway is not None
    assert gateway.allows("192.0.2.77") and gateway.allows("::ffff:192.0.2.77")
    assert gateway.allows("2001:db8:1:2::5")
    assert not gateway.allows("192.0.3.1") and not gateway.allows("2001:db8:2::1")
    assert not gateway.allows("garbage")


def test_default_whitelist_relays_for_nobody() -> None:
    config = parse_config(yaml.safe_dump({"hostname": "gw.example.net", "roles": ["outgoing_gateway"]}),
                          check_host=False)
    assert config.outgoing_gateway is not None
    assert config.outgoing_gateway.relay_networks == ()
    assert not config.outgoing_gateway.allows("127.0.0.1")


def test_errors_are_config_errors_in_process() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("hostname: a.example\nroles: [primary]\nprimary: {domains: []}\n", source="x.yml",
                     check_host=False)
    assert str(info.value) == "x.yml: primary.domains: must list at least one domain"
