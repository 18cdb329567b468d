"""The bans section as an administrator writes it: escalation, memory, the exempt list, the dictionary
thresholds and tarpit delays, and the one-line errors naming the key."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import BansConfig, DictionaryConfig

GATEWAY = {"hostname": "gw.example.net", "roles": ["incoming_gateway"],
           "incoming_gateway": {"domains": {"example.net": {"destinations": ["mail.example.net"]}}}}


def load(bans: Any, auth: Any = None) -> Any:
    doc = {**GATEWAY, "bans": bans, **({"auth": auth} if auth is not None else {})}
    return parse_config(yaml.safe_dump(doc), source="b.yml", check_host=False)


def test_left_out_the_section_is_the_model_default_and_auth_keeps_its_keys() -> None:
    config = load(None, {"ban_threshold": 5, "ban_window": "5m", "ban_duration": "2h", "exempt_loopback": True})
    assert config.bans == BansConfig()
    assert (config.auth.ban_threshold, config.auth.ban_window, config.auth.ban_duration) == (5, 300.0, 7200.0)


def test_every_key_is_read() -> None:
    bans = load({"escalation": 2.5, "max_duration": "7d", "memory": "14d",
                 "exempt": ["192.0.2.0/24", "2001:db8::/48"],
                 "dictionary": {"enabled": False, "session_threshold": 3, "ip_threshold": 7, "ban_after": 12,
                                "window": "30m", "tarpit_delay": "5s", "tarpit_max": "4m",
                                "ban_duration": "6h"}}).bans
    assert (bans.escalation, bans.max_duration, bans.memory) == (2.5, 7 * 86400.0, 14 * 86400.0)
    assert bans.is_exempt("192.0.2.9") and bans.is_exempt("::ffff:192.0.2.9") and not bans.is_exempt("192.0.3.1")
    assert bans.exempt[1] == ipaddress.ip_network("2001:db8::/48")
    assert bans.dictionary == DictionaryConfig(False, 3, 7, 12, 1800.0, 5.0, 240.0, 21600.0)


@pytest.mark.parametrize(("bans", "message"), [
    ({"escalation": 0.5}, "b.yml: bans.escalation: expected a factor of at least 1 (1: bans do not grow), got "
                          "float 0.5"),
    ({"escalation": "x4"}, "bans.escalation: expected a factor of at least 1"),
    ({"max_duration": 3600}, "bans.max_duration: expected a duration such as '30s'"),
    ({"memory": "0s"}, "bans.memory: duration must be positive"),
    ({"exempt": "192.0.2.0/24"}, "bans.exempt: expected a list"),
    ({"exempt": ["192.0.2.1/24"]}, "bans.exempt[0]: '192.0.2.1/24' has host bits set (did you mean 192.0.2.0/24?)"),
    ({"exempt": ["localhost"]}, "bans.exempt[0]: 'localhost' is not a CIDR network"),
    ({"banned": []}, "bans.banned: unknown key (expected one of escalation, max_duration, memory, exempt, dictionary)"),
    ({"dictionary": {"ban_after": 0}}, "bans.dictionary.ban_after: must be at least 1, got 0"),
    ({"dictionary": {"session_threshold": "5"}}, "bans.dictionary.session_threshold: expected an integer"),
    ({"dictionary": {"tarpit_delay": "5s", "tarpit_max": "1s"}},
     "bans.dictionary.tarpit_max: must be at least tarpit_delay (5s), got 1s"),
    ({"dictionary": {"tarpit_max": "10m"}}, "bans.dictionary.tarpit_max: must be at most 4m"),
    ({"dictionary": {"tarpit": "1s"}}, "bans.dictionary.tarpit: unknown key"),
    ({"dictionary": []}, "bans.dictionary: expected a mapping, got a list"),
])
def test_mistakes_are_one_line_errors_naming_the_key(bans: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(bans)
    assert message in str(info.value) and "\n" not in str(info.value)
