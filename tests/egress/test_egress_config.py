"""The failover keys as an administrator writes them: defaults, parsed values, one-line refusals."""

from __future__ import annotations

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import EgressFailoverConfig
from tests.cli.command import assert_one_line_error, mailfleet


def _gateway(failover: object = None, egress: object = None) -> str:
    section: dict = {"egress": egress if egress is not None else [{"address": "127.0.44.1"}]}
    if failover is not None:
        section["failover"] = failover
    return yaml.safe_dump({"roles": ["outgoing_gateway"], "hostname": "gw.test", "data_dir": "/tmp/mf-egress-unused",
                           "outgoing_gateway": section})


def test_the_failover_keys_are_parsed() -> None:
    config = parse_config(_gateway({"rejection_threshold": 2, "rejection_window": "10m",
                                    "rejection_texts": ["blocked", r"\b5\.7\.1\b"], "max_changes_per_day": 0}))
    assert config.outgoing_gateway is not None
    failover = config.outgoing_gateway.failover
    assert (failover.rejection_threshold, failover.rejection_window, failover.rejection_texts,
            failover.max_changes_per_day) == (2, 600.0, ("blocked", r"\b5\.7\.1\b"), 0)
    assert parse_config(_gateway({})).outgoing_gateway.failover == EgressFailoverConfig()  # type: ignore[union-attr]


@pytest.mark.parametrize(("failover", "where", "reason"), [
    ({"rejection_texts": ["ok", "blocked ("]}, "outgoing_gateway.failover.rejection_texts[1]",
     "is not a valid regular expression"),
    ({"rejection_texts": "blocked"}, "outgoing_gateway.failover.rejection_texts", "list"),
    ({"rejection_threshold": 0}, "outgoing_gateway.failover.rejection_threshold", ""),
    ({"rejection_window": 60}, "outgoing_gateway.failover.rejection_window", "duration"),
    ({"max_changes_per_day": -1}, "outgoing_gateway.failover.max_changes_per_day", ""),
])
def test_a_bad_failover_key_is_named(failover: dict, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_gateway(failover), check_host=False)
    assert where in str(info.value) and reason in str(info.value)


def test_check_config_refuses_an_egress_address_the_host_lacks(tmp_path) -> None:
    path = tmp_path / "mailfleet.yml"
    path.write_text(_gateway(egress=[{"address": "127.0.44.1"}, {"address": "192.0.2.1", "helo": "out.test"}]))
    assert_one_line_error(mailfleet("check-config", path), 2, "outgoing_gateway.egress[1].address",
                          "192.0.2.1 is not an address of this host")
    assert mailfleet("check-config", "--no-host-check", path).returncode == 0
