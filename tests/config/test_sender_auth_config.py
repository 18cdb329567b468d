"""The sender_auth section as an administrator writes it: defaults, per-domain DMARC actions, one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import DmarcActions

PRIMARY = {"hostname": "mx.example.org", "roles": ["primary"], "primary": {"domains": ["example.org"]}}


def load(section: Any) -> Any:
    return parse_config(yaml.safe_dump({**PRIMARY, "sender_auth": section}), source="f.yml",
                        check_host=False).sender_auth


def error(section: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(section)
    return str(info.value)


def test_defaults_are_off_with_every_method_and_the_strict_policy() -> None:
    settings = load(None)
    assert (settings.enabled, settings.authserv_id, settings.spf, settings.dkim, settings.dmarc, settings.arc,
            settings.refuse_local_senders) == (False, None, True, True, True, True, True)
    assert settings.actions_for("anything.example") == DmarcActions("reject", "junk")


def test_a_domain_entry_takes_what_it_leaves_out_from_the_section() -> None:
    settings = load({"enabled": True, "authserv_id": "mx.fleet.example", "dmarc_reject": "junk",
                     "dmarc_quarantine": "none", "domains": {"Lenient.Example": {"dmarc_quarantine": "reject"}}})
    assert settings.authserv_id == "mx.fleet.example"
    assert settings.actions_for("lenient.example") == DmarcActions("junk", "reject")
    assert settings.actions_for("LENIENT.example") == DmarcActions("junk", "reject")
    assert settings.actions_for("other.example") == DmarcActions("junk", "none")


@pytest.mark.parametrize(("section", "message"), [
    ({"enabled": "yes"}, "f.yml: sender_auth.enabled: expected true or false, got the string 'yes'"),
    ({"dmarc_reject": "bounce"}, "f.yml: sender_auth.dmarc_reject: unknown value 'bounce' (expected one of "
                                 "reject, junk, none)"),
    ({"authserv_id": "mx example"}, "f.yml: sender_auth.authserv_id: 'mx example' is not a valid host name"),
    ({"spf_timeout": "3s"}, "f.yml: sender_auth.spf_timeout: unknown key (expected one of enabled, "),
    ({"domains": {"a.example": {"dmarc_quarantine": "drop"}}},
     "f.yml: sender_auth.domains['a.example'].dmarc_quarantine: unknown value 'drop' (expected one of reject, "
     "junk, none)"),
    ({"domains": {"a.example": {"action": "reject"}}}, "f.yml: sender_auth.domains['a.example'].action: unknown key"),
    ({"domains": {"nodot": {}}}, "f.yml: sender_auth.domains.nodot: 'nodot' is not a valid domain name"),
    ({"domains": {"A.example": {}, "a.example": {}}}, "a.example is listed twice"),
    ({"domains": ["a.example"]}, "f.yml: sender_auth.domains: expected a mapping, got a list"),
])
def test_a_wrong_value_is_one_line_naming_the_key(section: Any, message: str) -> None:
    text = error(section)
    assert message in text and "\n" not in text
