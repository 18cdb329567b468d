"""The outbound_tls section: MTA-STS and DANE switches, the validating resolver, the CA file, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import HostPort, OutboundTLSConfig

HOST = {"hostname": "out.example.net", "roles": ["outgoing_gateway"]}


def load(section: Any) -> OutboundTLSConfig:
    return parse_config(yaml.safe_dump({**HOST, "outbound_tls": section}), source="f.yml",
                        base_dir=Path("/etc/mf"), check_host=False).outbound_tls


def error(section: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(section)
    text = str(info.value)
    assert "\n" not in text and text.startswith("f.yml: outbound_tls")
    return text


def test_the_keys_with_their_values() -> None:
    tls = load({"mta_sts": False, "dane": True, "resolver": ["127.0.0.53", "[::1]:5353"],
                "ca_file": "ca.pem", "fetch_timeout": "3s"})
    assert (tls.mta_sts, tls.dane, tls.ca_file, tls.fetch_timeout) == (False, True, Path("/etc/mf/ca.pem"), 3.0)
    assert tls.resolver == (HostPort("127.0.0.53", 53), HostPort("::1", 5353))
    assert load(None) == OutboundTLSConfig()


def test_dane_without_a_resolver_is_refused_naming_the_key() -> None:
    assert "outbound_tls.resolver" in error({"dane": True})


@pytest.mark.parametrize("section, key", [
    ({"resolver": ["resolver.example"]}, "outbound_tls.resolver[0]"),
    ({"fetch_timeout": "soon"}, "outbound_tls.fetch_timeout"),
    ({"ca_file": 3}, "outbound_tls.ca_file"),
    ({"dan": True}, "outbound_tls"),
])
def test_bad_values_name_their_key(section: dict, key: str) -> None:
    assert key in error(section)
