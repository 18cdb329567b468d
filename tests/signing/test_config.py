"""The dkim section's own keys: the signed header list and the sealing domain, and the one-line errors of bad
values."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, parse_config

BASE = "hostname: gw.example.org\nroles: [outgoing_gateway]\n"


def test_headers_and_arc_domain_are_read() -> None:
    config = parse_config(BASE + "dkim: {enabled: true, headers: [From, subject, from], arc_domain: Example.ORG}\n")
    assert config.dkim.headers == ("from", "subject")
    assert config.dkim.arc_domain == "example.org"
    assert "from" in parse_config(BASE).dkim.headers


@pytest.mark.parametrize(("headers", "reason"), [
    ("[subject]", "dkim.headers: must include from"),
    ("[from, 'bad name']", "dkim.headers[1]: 'bad name' is not a header field name"),
    ("[from, received]", "dkim.headers[1]: received must not be signed"),
])
def test_bad_header_lists_are_refused_in_one_line(headers: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + f"dkim: {{headers: {headers}}}\n")
    assert reason in str(info.value) and "\n" not in str(info.value)
