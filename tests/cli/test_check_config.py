"""`mailfleet check-config`: every validation rule gives one clear line, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BASE = {
    "hostname": "mx1.example.net",
    "data_dir": "/var/lib/mailfleet",
    "roles": ["primary"],
    "listen": {"smtp": ["127.0.0.1:2525"]},
    "primary": {"domains": ["example.org"], "users": [{"address": "alice@example.org"}]},
}


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "mailfleet.yml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


def with_changes(**changes: object) -> dict:
    config = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = config
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return config


def test_valid_file_passes(tmp_path: Path) -> None:
    result = check(tmp_path, yaml.safe_dump(BASE))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


CASES = [
    # (description, config or raw text, expected key path, expected words in the reason)
    ("unknown top-level key", with_changes(nonsense=1), "nonsense", "unknown key"),
    ("unknown role", with_changes(roles=["primary", "nonsense_role"]), "roles[1]", "unknown role 'nonsense_role'"),
    ("repeated role", with_changes(roles=["primary", "primary"]), "roles[1]", "listed twice"),
    ("no roles", with_changes(roles=[]), "roles", "at least one role"),
    ("missing hostname", with_changes(hostname=None), "hostname", "is required"),
    ("bad hostname", with_changes(hostname="bad host!"), "hostname", "not a valid host name"),
    ("wrong type", with_changes(smtp={"max_message_size": "big"}), "smtp.max_message_size", "expected an integer"),
    ("too small", with_changes(smtp={"max_recipients": 0}), "smtp.max_recipients", "at least 1"),
    ("zero idle timeout", with_changes(smtp={"idle_timeout": "0s"}), "smtp.idle_timeout", "must be positive"),
    ("bad duration", with_changes(queue={"retry_schedule": [10]}), "queue.retry_schedule[0]", "duration"),
    ("bad unit", with_changes(queue={"lifetime": "5 weeks"}), "queue.lifetime", "duration"),
    ("zero lifetime", with_changes(queue={"lifetime": "0s"}), "queue.lifetime", "must be positive"),
    ("bare number", with_changes(delivery={"connection_reuse_time": 2}), "delivery.connection_reuse_time",
     "duration"),
    ("bad listen", with_changes(listen={"smtp": ["127.0.0.1"]}), "listen.smtp[0]", "needs a port"),
    ("bad port", with_changes(listen={"smtp": ["127.0.0.1:99999"]}), "listen.smtp[0]", "port must be"),
    ("listen on a name", with_changes(listen={"smtp": ["mail.example.org:25"]}), "listen.smtp[0]",
     "must be an IP address"),
    ("same address twice", with_changes(listen={"smtp": ["127.0.0.1:2525"], "submission": ["127.0.0.1:2525"]}),
     "listen.submission[0]", "already used by listen.smtp[0]"),
    ("address not on host", with_changes(listen={"smtp": ["192.0.2.123:25"]}), "listen.smtp[0]",
     "not an address of this host"),
    ("imap without primary", {**with_changes(roles=["outgoing_gateway"], primary=None),
                              "listen": {"smtp": ["127.0.0.1:2525"], "imap": ["127.0.0.1:2143"]}},
     "listen.imap", "only the primary role"),
    ("bad CIDR", {**with_changes(roles=["outgoing_gateway"], primary=None),
                  "outgoing_gateway": {"relay_networks": ["10.0.0.0/33"]}},
     "outgoing_gateway.relay_networks[0]", "not a CIDR"),
    ("CIDR host bits", {**with_changes(roles=["outgoing_gateway"], primary=None),
                        "outgoing_gateway": {"relay_networks": ["10.0.0.1/24"]}},
     "outgoing_gateway.relay_networks[0]", "host bits set (did you mean 10.0.0.0/24?)"),
    ("bad host:port", with_changes(delivery={"smarthost": "relay.example:port"}), "delivery.smarthost",
     "port must be"),
    ("bad IPv6 host:port", with_changes(delivery={"smarthost": "[2001:db8::1:25"}), "delivery.smarthost",
     "is not host:port"),
    ("unreadable cert", with_changes(tls={"cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}),
     "tls.cert", "not a readable file"),
    ("cert without key", with_changes(tls={"cert": __file__}), "tls", "cert and key go together"),
    ("section of a role not held", {**BASE, "backup_mx": {"domains": {"example.com": {
        "primary_hosts": ["mail.example.com"]}}}}, "backup_mx", "role 'backup_mx' is not in roles"),
    ("local and forwarded", {**with_changes(roles=["primary", "incoming_gateway"]), "incoming_gateway": {
        "domains": {"example.org": {"destinations": ["10.0.0.5:25"]}}}},
     "incoming_gateway.domains", "example.org is also in primary.domains"),
    ("local and backed up", {**with_changes(roles=["primary", "backup_mx"]), "backup_mx": {
        "domains": {"example.org": {"primary_hosts": ["10.0.0.5"]}}}},
     "backup_mx.domains", "example.org is also in primary.domains"),
    ("backup without hosts", {**with_changes(roles=["primary", "backup_mx"]), "backup_mx": {
        "domains": {"example.com": {"primary_hosts": []}}}},
     "backup_mx.domains['example.com'].primary_hosts", "at least one host"),
    ("backup recipient outside domain", {**with_changes(roles=["primary", "backup_mx"]), "backup_mx": {
        "domains": {"example.com": {"primary_hosts": ["10.0.0.5"], "recipients": ["bob@example.net"]}}}},
     "backup_mx.domains['example.com'].recipients[0]", "not in example.com"),
    ("clear-text password", with_changes(primary={"domains": ["example.org"], "users": [
        {"address": "alice@example.org", "password_hash": "hunter2"}]}),
     "primary.users[0].password_hash", "must be an argon2 hash"),
    ("user outside domains", with_changes(primary={"domains": ["example.org"], "users": [
        {"address": "alice@example.com"}]}), "primary.users[0].address", "not in one of primary.domains"),
    ("bad domain", with_changes(primary={"domains": ["exa mple.org"]}), "primary.domains[0]", "not a valid domain"),
    ("primary without section", with_changes(primary=None), "primary", "is required"),
    ("bad nameserver", with_changes(dns={"nameservers": ["dns.example"]}), "dns.nameservers[0]", "not an IP"),
    ("bad log level", with_changes(log_level="loud"), "log_level", "unknown level 'loud'"),
]


@pytest.mark.parametrize(("what", "config", "where", "reason"), CASES, ids=[c[0] for c in CASES])
def test_broken_config_is_one_clear_line(tmp_path: Path, what: str, config: dict, where: str, reason: str) -> None:
    result = check(tmp_path, yaml.safe_dump(config))
    assert result.returncode == 2, (what, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"mailfleet.yml: {where}: " in lines[0], lines[0]
    assert reason in lines[0], lines[0]


@pytest.mark.parametrize(("text", "where", "reason"), [
    ("roles: [primary\nhostname: x", "line ", "invalid YAML"),
    ("hostname: a.example\nhostname: b.example\nroles: [primary]\n", "line 2", "duplicate key 'hostname'"),
    ("", "top level", "the file is empty"),
    ("- just\n- a list\n", "top level", "expected a mapping"),
])
def test_broken_yaml(tmp_path: Path, text: str, where: str, reason: str) -> None:
    result = check(tmp_path, text)
    assert result.returncode == 2
    assert where in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "appliance.cli.main", "check-config",
                             str(tmp_path / "absent.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "absent.yml: file: does not exist" in result.stderr


def test_serve_refuses_broken_config_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "mailfleet.yml"
    path.write_text(yaml.safe_dump(with_changes(roles=["nonsense_role"])))
    result = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path), "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "roles[0]: unknown role 'nonsense_role'" in result.stderr
    assert "Traceback" not in result.stderr
