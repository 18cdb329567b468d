"""The keys ManageSieve reads: `listen.managesieve` (primary only) and the `sieve:` limits, with clear errors."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, parse_config
from appliance.config.model import HostPort, SieveConfig

PRIMARY = "hostname: mx.example.org\nroles: [primary]\nprimary: {domains: [example.org]}\n"


def test_listener_and_limits_are_read() -> None:
    config = parse_config(PRIMARY + "listen: {managesieve: ['127.0.54.1:4190']}\n"
                          "sieve: {max_script_size: 1000, max_scripts: 2, max_redirects: 0}\n", check_host=False)
    assert config.listen.managesieve == (HostPort("127.0.54.1", 4190),)
    assert config.sieve == SieveConfig(max_script_size=1000, max_scripts=2, max_redirects=0)
    assert parse_config(PRIMARY, check_host=False).sieve == SieveConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("hostname: mx.example.org\nroles: [backup_mx]\nbackup_mx: {domains: [example.org]}\n"
     "listen: {managesieve: ['127.0.54.1:4190']}\n", "listen.managesieve: only the primary role serves this"),
    (PRIMARY + "listen: {managesieve: ['127.0.54.1']}\n", r"listen\.managesieve\[0\]: .* needs a port"),
    (PRIMARY + "sieve: {max_scripts: 0}\n", "sieve.max_scripts: must be at least 1, got 0"),
    (PRIMARY + "sieve: {max_script_size: big}\n", "sieve.max_script_size: expected an integer"),
    (PRIMARY + "sieve: {max_size: 10}\n", "max_size"),
])
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, check_host=False)
