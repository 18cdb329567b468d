"""The limits section as an administrator writes it: defaults per set, partial sets, and the one-line errors."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import LimitsConfig, LimitSet, field_default

GATEWAY = {"hostname": "gw.example.net", "roles": ["incoming_gateway"],
           "incoming_gateway": {"domains": {"example.net": {"destinations": ["mail.example.net"]}}}}


def load(limits: Any) -> LimitsConfig:
    return parse_config(yaml.safe_dump({**GATEWAY, "limits": limits}), source="f.yml", base_dir=Path("/etc/mf"),
                        check_host=False).limits


def error(limits: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(limits)
    return str(info.value)


def test_the_defaults_are_anvils_session_limit_and_flood_rates() -> None:
    limits = load(None)
    assert limits.exempt == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert limits.client.sessions == 50  # Postfix: smtpd_client_connection_count_limit
    assert limits.rate_window == 60.0  # Postfix: anvil_rate_time_unit
    assert (limits.ipv4_prefix, limits.ipv6_prefix) == (24, 64)
    assert limits.authenticated.sessions == 0


def test_a_set_that_names_some_keys_keeps_its_own_defaults_for_the_rest() -> None:
    limits = load({"network": {"sessions": 10}, "client": {"auth_rate": 0}, "rate_window": "10m",
                   "exempt": ["192.0.2.0/24", "2001:db8::/32"]})
    default_network = field_default(LimitsConfig, "network")
    assert limits.network == LimitSet(10, default_network.connection_rate, default_network.message_rate,
                                      default_network.recipient_rate, default_network.auth_rate)
    assert limits.client.auth_rate == 0 and limits.client.sessions == 50
    assert limits.rate_window == 600.0
    assert [str(n) for n in limits.exempt] == ["192.0.2.0/24", "2001:db8::/32"]


def test_nothing_is_exempt_when_the_list_is_empty() -> None:
    assert load({"exempt": []}).exempt == ()


@pytest.mark.parametrize(("limits", "message"), [
    ({"client": {"sessions": -1}}, "limits.client.sessions: must be at least 0, got -1"),
    ({"network": {"message_rate": "many"}}, "limits.network.message_rate: expected an integer"),
    ({"relay": {"session": 5}}, "limits.relay.session: unknown key"),
    ({"authenticated": {"sessions": 5}},
     "limits.authenticated.sessions: unknown key (expected one of message_rate, recipient_rate)"),
    ({"exempt": ["10.0.0.1/8"]}, "limits.exempt[0]: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
    ({"exempt": "127.0.0.0/8"}, "limits.exempt: expected a list"),
    ({"rate_window": 60}, "limits.rate_window: expected a duration"),
    ({"ipv4_prefix": 33}, "limits.ipv4_prefix: must be between 8 and 32, got 33"),
    ({"ipv6_prefix": 8}, "limits.ipv6_prefix: must be between 16 and 128, got 8"),
    ({"client": [50]}, "limits.client: expected a mapping"),
    ({"sessions": 50}, "limits.sessions: unknown key"),
])
def test_mistakes_are_one_line_naming_the_key(limits: Any, message: str) -> None:
    text = error(limits)
    assert message in text
    assert "\n" not in text
    assert text.startswith("f.yml: ")
