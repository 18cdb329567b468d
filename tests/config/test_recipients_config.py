"""Recipient verification of backed-up and forwarded domains as an administrator writes it: the verify modes,
the recipient lists with their catch-all form, the callout settings, and the one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import CalloutConfig

SECTIONS = {"backup_mx": "primary_hosts", "incoming_gateway": "destinations"}


def load(role: str, domain_entry: dict[str, Any], **section: Any) -> Any:
    doc = {"hostname": "mx.example.net", "roles": [role],
           role: {"domains": {"example.net": {SECTIONS[role]: ["mail.example.net"], **domain_entry}}, **section}}
    return getattr(parse_config(yaml.safe_dump(doc), source="f.yml", check_host=False), role)


def error(role: str, domain_entry: dict[str, Any], **section: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(role, domain_entry, **section)
    return str(info.value)


@pytest.mark.parametrize("role", SECTIONS)
def test_verify_is_list_with_recipients_and_callout_without(role: str) -> None:
    listed = load(role, {"recipients": ["Alice@Example.NET", "@example.net"]}).domains["example.net"]
    assert (listed.verify, listed.recipients) == ("list", frozenset({"alice@example.net", "@example.net"}))
    assert load(role, {}).domains["example.net"].verify == "callout"
    assert load(role, {"verify": "none"}).domains["example.net"].verify == "none"


@pytest.mark.parametrize("role", SECTIONS)
def test_callout_settings_parse_and_default_to_the_model(role: str) -> None:
    assert load(role, {}).callout == CalloutConfig()
    callout = load(role, {}, callout={"timeout": "5s", "positive_ttl": "1d", "negative_ttl": "10m",
                                      "unreachable": "accept"}).callout
    assert callout == CalloutConfig(timeout=5.0, positive_ttl=86400.0, negative_ttl=600.0, unreachable="accept")


@pytest.mark.parametrize(("entry", "section", "message"), [
    ({"verify": "list"}, {}, "['example.net'].recipients: verify is list but no recipient is listed"),
    ({"verify": "none", "recipients": ["a@example.net"]}, {}, "['example.net'].verify: is none, so the recipients"),
    ({"verify": "callout", "recipients": ["a@example.net"]}, {}, "verify: is callout, so the recipients"),
    ({"verify": "maybe"}, {}, "['example.net'].verify: unknown value 'maybe' (expected one of list, callout, none)"),
    ({"recipients": ["a@example.org"]}, {}, "['example.net'].recipients[0]: a@example.org is not in example.net"),
    ({"recipients": ["@example.org"]}, {}, "['example.net'].recipients[0]: @example.org is not in example.net"),
    ({"recipients": ["no-at-sign"]}, {}, "recipients[0]: 'no-at-sign' is not a valid mail address"),
    ({"recipients": "a@example.net"}, {}, "recipients: expected a list"),
    ({}, {"callout": {"timeout": 5}}, "callout.timeout: expected a duration"),
    ({}, {"callout": {"unreachable": "bounce"}}, "callout.unreachable: unknown value 'bounce'"),
    ({}, {"callout": {"retries": 3}}, "callout.retries: unknown key"),
])
@pytest.mark.parametrize("role", SECTIONS)
def test_bad_verification_settings_are_one_line_naming_the_key(role: str, entry: dict, section: dict,
                                                               message: str) -> None:
    text = error(role, entry, **section)
    assert message in text and text.startswith(f"f.yml: {role}.") and "\n" not in text, text
