"""The srs section as an administrator writes it, and the one-line errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config

SECRET = "a-secret-of-enough-length"
PRIMARY = {"hostname": "mx.home.test", "roles": ["primary"], "primary": {"domains": ["home.test", "also.test"]}}
GATEWAY = {"hostname": "gw.home.test", "roles": ["incoming_gateway"],
           "incoming_gateway": {"domains": {"home.test": {"destinations": ["mail.home.test"]}}}}


def load(base: dict, srs: Any) -> Any:
    return parse_config(yaml.safe_dump({**base, "srs": srs}), source="s.yml", check_host=False)


def test_every_key_is_read_and_the_domain_defaults_to_the_first_primary_domain() -> None:
    config = load(PRIMARY, {"enabled": True, "secrets": [SECRET, "the-old-one-still-verifies"], "max_age": "7d"})
    assert config.srs.enabled and config.srs.secrets == (SECRET, "the-old-one-still-verifies")
    assert config.srs.max_age == 7 * 86400.0 and config.srs_domain == "home.test"
    assert load(PRIMARY, {"enabled": True, "secrets": [SECRET], "domain": "Also.Test"}).srs_domain == "also.test"
    assert load(GATEWAY, {"enabled": True, "secrets": [SECRET], "domain": "home.test"}).srs_domain == "home.test"


@pytest.mark.parametrize(("base", "srs", "where", "reason"), [
    (PRIMARY, {"enabled": True}, "srs.secrets", "at least one secret"),
    (PRIMARY, {"enabled": True, "secrets": [SECRET, "short"]}, "srs.secrets[1]", "at least 16"),
    (PRIMARY, {"enabled": True, "secrets": [SECRET], "domain": "elsewhere.test"}, "srs.domain",
     "not a domain this host receives mail for"),
    (GATEWAY, {"enabled": True, "secrets": [SECRET]}, "srs.domain", "required on a host without the primary"),
    (PRIMARY, {"enabled": True, "secrets": SECRET}, "srs.secrets", ""),
    (PRIMARY, {"enabled": True, "secrets": [SECRET], "max_age": "soon"}, "srs.max_age", ""),
])
def test_bad_input_names_the_key(base: dict, srs: Any, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(base, srs)
    assert caught.value.where == where and reason in caught.value.reason
    assert "\n" not in str(caught.value)


def test_off_needs_nothing() -> None:
    assert not load(GATEWAY, {"enabled": False}).srs.enabled
