"""The greylisting section as an administrator writes it: off by default, postgrey's timings, the exempt lists,
and one-line errors naming the key."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import GreylistConfig

MX = {"hostname": "mx.example.org", "roles": ["primary"], "primary": {"domains": ["example.org"]}}


def load(section: Any) -> GreylistConfig:
    return parse_config(yaml.safe_dump({**MX, "greylisting": section}), source="f.yml",
                        check_host=False).greylisting


def error(section: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(section)
    return str(info.value)


def test_greylisting_is_off_with_postgreys_timings_by_default() -> None:
    config = parse_config(yaml.safe_dump(MX), check_host=False).greylisting
    assert config == GreylistConfig() == load(None)
    assert not config.enabled
    assert (config.delay, config.retry_window, config.lifetime) == (300.0, 2 * 86400.0, 35 * 86400.0)
    assert (config.auto_allow, config.auto_allow_interval) == (5, 3600.0)


def test_every_key_as_written() -> None:
    config = load({"enabled": True, "delay": "2m", "retry_window": "6h", "lifetime": "10d", "auto_allow": 0,
                   "auto_allow_interval": "0s", "exempt": ["192.0.2.0/24", "2001:db8::/32"],
                   "exempt_recipients": ["Postmaster@Example.ORG", "Open.Example"]})
    assert config.enabled and (config.delay, config.retry_window, config.lifetime) == (120.0, 21600.0, 864000.0)
    assert (config.auto_allow, config.auto_allow_interval) == (0, 0.0)
    assert config.exempt == (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert config.exempts_client("192.0.2.9") and config.exempts_client("::ffff:192.0.2.9")
    assert not config.exempts_client("198.51.100.1")
    assert config.exempts_recipient("postmaster@example.org") and config.exempts_recipient("x@OPEN.example")
    assert not config.exempts_recipient("alice@example.org")


@pytest.mark.parametrize(("section", "message"), [
    ({"enabled": "yes"}, "f.yml: greylisting.enabled: expected true or false, got the string 'yes'"),
    ({"delay": 300}, "greylisting.delay: expected a duration such as '30s'"),
    ({"delay": "0s"}, "greylisting.delay: duration must be positive, got '0s'"),
    ({"retry_window": "4m"}, "greylisting.retry_window: must be longer than delay (300s)"),
    ({"lifetime": "forever"}, "greylisting.lifetime: expected a duration"),
    ({"auto_allow": -1}, "greylisting.auto_allow: must be at least 0, got -1"),
    ({"auto_allow": True}, "greylisting.auto_allow: expected an integer, got True"),
    ({"exempt": ["192.0.2.1/24"]}, "greylisting.exempt[0]: '192.0.2.1/24' has host bits set"),
    ({"exempt": "192.0.2.0/24"}, "greylisting.exempt: expected a list"),
    ({"exempt_recipients": ["not a domain"]}, "greylisting.exempt_recipients[0]: 'not a domain' is not a valid"),
    ({"exempt_recipients": ["a b@example.org"]}, "greylisting.exempt_recipients[0]: 'a b@example.org' is not a"),
    ({"expire": "2d"}, "greylisting.expire: unknown key (expected one of enabled, delay, retry_window"),
])
def test_errors_name_the_key(section: dict[str, Any], message: str) -> None:
    assert message in error(section)
