"""The filters section as an administrator writes it: scanners, thresholds per domain, and the one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import ConfigError, parse_config
from appliance.config.model import DEFAULT_MAX_SCAN_SIZE, HostPort, UnixSocket

GATEWAY = {"hostname": "gw.example.net", "roles": ["incoming_gateway"],
           "incoming_gateway": {"domains": {"example.net": {"destinations": ["mail.example.net"]}}}}


def load(filters: Any) -> Any:
    return parse_config(yaml.safe_dump({**GATEWAY, "filters": filters}), source="f.yml", base_dir=Path("/etc/mf"),
                        check_host=False).filters


def error(filters: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(filters)
    return str(info.value)


def test_scanners_get_names_sizes_and_addresses_of_their_kind() -> None:
    filters = load({"scanners": [
        {"type": "clamav", "address": "unix:/run/clamav/clamd.ctl"},
        {"type": "spamassassin", "address": "127.0.0.1:783", "timeout": "10s", "on_error": "accept"},
        {"type": "milter", "name": "dkim", "address": "inet:[::1]:8891"},
        {"type": "rspamd", "address": "unix:rspamd.sock", "max_scan_size": 1000, "settings_id": "inbound"},
    ]})
    clamav, spamd, dkim, rspamd = filters.scanners
    assert (clamav.name, clamav.address, clamav.max_scan_size) == (
        "clamav", UnixSocket(Path("/run/clamav/clamd.ctl")), DEFAULT_MAX_SCAN_SIZE["clamav"])
    assert (spamd.timeout, spamd.on_error, spamd.max_scan_size) == (10.0, "accept", 512000)
    assert (dkim.name, dkim.address, dkim.max_scan_size) == ("dkim", HostPort("::1", 8891), 0)
    assert rspamd.address == UnixSocket(Path("/etc/mf/rspamd.sock"))  # relative to the config file
    assert (rspamd.max_scan_size, rspamd.settings_id) == (1000, "inbound")


def test_a_domain_policy_takes_the_global_thresholds_it_does_not_set() -> None:
    filters = load({"spam": {"add_header": 4, "reject": None},
                    "domains": {"Example.NET": {"quarantine": 9.5}}})
    assert (filters.spam.add_header, filters.spam.quarantine, filters.spam.reject) == (4.0, None, None)
    strict = filters.policy_for("example.net")
    assert (strict.add_header, strict.quarantine, strict.reject) == (4.0, 9.5, None)
    assert filters.policy_for("other.example") == filters.spam


def test_trusted_gateways_are_networks() -> None:
    filters = load({"trusted_gateways": ["192.0.2.0/28", "2001:db8::/64"]})
    assert filters.trusts("192.0.2.5") and filters.trusts("::ffff:192.0.2.5") and filters.trusts("2001:db8::9")
    assert not filters.trusts("192.0.2.16") and not filters.trusts("not an address")


@pytest.mark.parametrize(("filters", "message"), [
    ({"scanners": [{"address": "127.0.0.1:783"}]},
     "filters.scanners[0].type: is required (one of clamav, spamassassin, rspamd, milter)"),
    ({"scanners": [{"type": "sophos", "address": "127.0.0.1:1"}]},
     "filters.scanners[0].type: unknown value 'sophos' (expected one of clamav, spamassassin, rspamd, milter)"),
    ({"scanners": [{"type": "clamav"}]},
     "filters.scanners[0].address: is required (host:port, or unix:/path for a Unix socket)"),
    ({"scanners": [{"type": "clamav", "address": "127.0.0.1"}]},
     "filters.scanners[0].address: '127.0.0.1': a scanner address needs a port (host:port) or unix:/path"),
    ({"scanners": [{"type": "clamav", "address": "unix:"}]},
     "filters.scanners[0].address: 'unix:': give the socket's path after unix:"),
    ({"scanners": [{"type": "clamav", "address": "127.0.0.1:3310"}, {"type": "clamav", "address": "unix:/x"}]},
     "filters.scanners[1].name: 'clamav' is used by an earlier scanner; give each a name of its own"),
    ({"scanners": [{"type": "clamav", "address": "127.0.0.1:3310", "user": "amavis"}]},
     "filters.scanners[0].user: applies to spamassassin only, not clamav"),
    ({"scanners": [{"type": "spamassassin", "address": "127.0.0.1:783", "user": "x\r\nSpam: yes"}]},
     "filters.scanners[0].user: 'x\\r\\nSpam: yes': use printable ASCII without spaces or colons"),
    ({"scanners": [{"type": "clamav", "address": "127.0.0.1:3310", "on_error": "ignore"}]},
     "filters.scanners[0].on_error: unknown value 'ignore' (expected one of tempfail, accept)"),
    ({"spam": {"add_header": 8, "reject": 6}},
     "filters.spam: add_header (8.0) is above reject (6.0): the thresholds rise from add_header to quarantine "
     "to reject"),
    ({"spam": {"reject": "high"}},
     "filters.spam.reject: expected a score (a number) or null to turn this action off, got the string 'high'"),
    ({"domains": {"example.net": {"quarantine": 20}}},
     "filters.domains['example.net']: quarantine (20.0) is above reject (15.0): the thresholds rise from "
     "add_header to quarantine to reject"),
    ({"virus_action": "discard"}, "filters.virus_action: unknown value 'discard' (expected one of reject, quarantine)"),
    ({"trusted_gateways": ["192.0.2.1/24"]},
     "filters.trusted_gateways[0]: '192.0.2.1/24' has host bits set (did you mean 192.0.2.0/24?)"),
])
def test_mistakes_get_one_line_naming_the_key(filters: Any, message: str) -> None:
    assert error(filters) == f"f.yml: {message}"
