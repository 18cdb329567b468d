"""`mailfleet dkim list|record|import|check|rotate` as an administrator (or the Ansible roles) run them, against
a real BIND: a rotation published by RFC 2136 switches once DNS serves the records; one published by hand (here
with nsupdate, as the dns_records role does) stays pending until `check` sees it; a key imported twice is
"unchanged", a foreign key under a selector, a damaged keys.json and DNS down are one-line errors, exit 2."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from peers.named import NamedServer, free_port, start_named

from .command import assert_one_line_error, mailfleet

DOMAIN = "example.test"
ADDRESS = "127.0.0.1"  # BIND listens only on an interface's address; a free port keeps it apart
TSIG = ("mf-update", "hmac-sha256", base64.b64encode(os.urandom(32)).decode())


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory):
    server = start_named(tmp_path_factory.mktemp("named"), {DOMAIN: ""}, address=ADDRESS, update_key=TSIG)
    yield server
    server.stop()


def write_config(tmp_path: Path, dns_port: int, publish: NamedServer | None = None) -> Path:
    dkim: dict = {"enabled": True}
    if publish is not None:
        dkim["publish"] = {"server": ADDRESS, "port": publish.port, "key_name": TSIG[0], "key_secret": TSIG[2]}
    doc = {"hostname": "mx.example.test", "roles": ["primary"], "data_dir": str(tmp_path / "data"),
           "primary": {"domains": [DOMAIN]},
           "dns": {"nameservers": [ADDRESS], "port": dns_port, "timeout": "1s"}, "dkim": dkim}
    path = tmp_path / "mailfleet.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def rows(config: Path) -> dict[str, dict]:
    listing = mailfleet("dkim", "list", "--json", config=config)
    assert listing.returncode == 0, listing.stderr
    return {row["selector"]: row for row in json.loads(listing.stdout)}


def nsupdate(named: NamedServer, commands: str) -> None:
    script = f"server {named.address} {named.port}\nzone {DOMAIN}\n{commands}\nsend\n"
    subprocess.run(["nsupdate", "-y", f"{TSIG[1]}:{TSIG[0]}:{TSIG[2]}"], input=script, text=True, check=True,
                   timeout=30)


def test_rotate_with_dns_updates_switches_and_keeps_the_old_selectors(named: NamedServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, named.port, publish=named)
    first = mailfleet("dkim", "rotate", DOMAIN, "--wait", "30s", config=config)
    assert first.returncode == 0, first.stderr
    made = re.findall(r"\b(mf\d{8}[re])\b", first.stdout)
    assert first.stdout.startswith(f"published {made[0]}, {made[1]} by DNS update\n")
    assert f"{DOMAIN} {made[0]} (rsa-sha256): pending -> active (seen in DNS)" in first.stdout
    assert {s: (r["state"], r["visible"]) for s, r in rows(config).items()} == {
        made[0]: ("active", True), made[1]: ("active", True)}

    second = mailfleet("dkim", "rotate", DOMAIN, "--wait", "30s", config=config)
    assert second.returncode == 0, second.stderr
    new = sorted(set(re.findall(r"\b(mf\d{8}b[re])\b", second.stdout)))
    assert len(new) == 2
    assert re.search(rf"the old selectors {made[0]}, {made[1]} stay published until \d{{4}}-\d\d-\d\d ",
                     second.stdout)
    listing = rows(config)
    assert {s: r["state"] for s, r in listing.items()} == {made[0]: "retiring", made[1]: "retiring",
                                                           new[0]: "active", new[1]: "active"}
    assert listing[made[0]]["retire_at"] - listing[made[0]]["since"] == 7 * 86400
    assert all(r["visible"] for r in listing.values())
    text = mailfleet("dkim", "list", config=config).stdout.splitlines()
    assert any(line.startswith(f"{DOMAIN}  {made[0]}  rsa-sha256  retiring since ") and line.endswith("in DNS")
               for line in text)

    record = mailfleet("dkim", "record", DOMAIN, config=config)
    assert record.returncode == 0
    assert len(record.stdout.splitlines()) == 4
    assert all(line.split()[2:4] == ["IN", "TXT"] for line in record.stdout.splitlines())


def test_rotate_without_updates_waits_for_the_records_published_by_hand(named: NamedServer,
                                                                        tmp_path: Path) -> None:
    config = write_config(tmp_path, named.port)
    domain_keys = tmp_path / "data" / "dkim" / DOMAIN
    rotated = mailfleet("dkim", "rotate", DOMAIN, "--no-wait", config=config)
    assert rotated.returncode == 0, rotated.stderr
    lines = rotated.stdout.splitlines()
    assert lines[0] == f"publish these records in the zone of {DOMAIN}:"
    assert lines[1].startswith("mf") and f"._domainkey.{DOMAIN}. 3600 IN TXT \"v=DKIM1; k=rsa; p=" in lines[1]
    assert lines[-1].startswith("left pending")
    pending = rows(config).values()
    assert {(r["state"], r["visible"]) for r in pending} == {("pending", False)}
    assert mailfleet("dkim", "check", config=config).stdout == "nothing changed\n"
    assert json.loads((domain_keys / "keys.json").read_text())["keys"][0]["state"] == "pending"

    record = mailfleet("dkim", "record", DOMAIN, config=config).stdout.splitlines()
    assert record == lines[1:3]
    nsupdate(named, "\n".join(f"update add {line}" for line in record))
    checked = mailfleet("dkim", "check", config=config)
    assert checked.returncode == 0, checked.stderr
    assert [line.split(": ")[1] for line in checked.stdout.splitlines()] == ["pending -> active (seen in DNS)"] * 2
    nsupdate(named, "\n".join(f"update delete {line.split()[0]} TXT" for line in record))


def test_import_is_idempotent_and_refuses_a_foreign_key(named: NamedServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, named.port)
    key, other = tmp_path / "k.pem", tmp_path / "other.pem"
    for path in (key, other):
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True)
    imported = mailfleet("dkim", "import", DOMAIN, "ans1", key, config=config)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == f"{DOMAIN} ans1: imported (ed25519-sha256), pending until its record is seen in DNS\n"
    again = mailfleet("dkim", "import", DOMAIN, "ans1", key, config=config)
    assert (again.returncode, again.stdout) == (0, f"{DOMAIN} ans1: unchanged (pending)\n")
    state = (tmp_path / "data" / "dkim" / DOMAIN / "keys.json").read_bytes()
    assert_one_line_error(mailfleet("dkim", "import", DOMAIN, "ans1", other, config=config), 2,
                          "selector 'ans1' exists (pending) with another key")
    assert_one_line_error(mailfleet("dkim", "import", DOMAIN, "ans2", config, config=config), 2,
                          "not an unencrypted PEM private key")
    assert_one_line_error(mailfleet("dkim", "import", DOMAIN, "bad_selector", key, config=config), 2,
                          "'bad_selector' is not a valid selector")
    assert (tmp_path / "data" / "dkim" / DOMAIN / "keys.json").read_bytes() == state


def test_broken_store_bad_domain_and_dns_down_are_one_line_errors(named: NamedServer, tmp_path: Path) -> None:
    down = write_config(tmp_path, free_port([ADDRESS], (socket.SOCK_DGRAM, socket.SOCK_STREAM)))
    error = assert_one_line_error(mailfleet("dkim", "rotate", DOMAIN, config=down), 2, "DNS: ",
                                  "no key made, nothing changed")
    assert DOMAIN in error
    assert not (tmp_path / "data" / "dkim" / DOMAIN / "keys.json").exists()
    assert_one_line_error(mailfleet("dkim", "rotate", "not a domain", config=down), 2,
                          "'not a domain' is not a valid domain name")
    assert_one_line_error(mailfleet("dkim", "record", DOMAIN, config=down), 2, f"{DOMAIN} has no DKIM keys")
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    assert mailfleet("dkim", "import", DOMAIN, "ans1", key, config=down).returncode == 0
    [row] = rows(down).values()  # DNS down: still listed, with the reason instead of an answer
    assert (row["state"], row["visible"]) == ("pending", None) and DOMAIN in row["dns_error"]

    keys = tmp_path / "data" / "dkim" / DOMAIN / "keys.json"
    state = keys.read_bytes()
    refused = write_config(tmp_path, named.port, publish=named)
    doc = yaml.safe_load(refused.read_text())
    doc["dkim"]["publish"]["key_secret"] = base64.b64encode(b"not the key" * 3).decode()
    refused.write_text(yaml.safe_dump(doc))
    assert_one_line_error(mailfleet("dkim", "rotate", DOMAIN, config=refused), 2, "DNS update adding mf",
                          f"port {named.port}")
    assert keys.read_bytes() == state and sorted(p.name for p in keys.parent.glob("*.pem")) == ["ans1.pem"]
    keys.write_text('{"keys": [{"selector": "a"')
    config = write_config(tmp_path, named.port)
    for command in (("list",), ("rotate", DOMAIN, "--no-wait")):
        assert_one_line_error(mailfleet("dkim", *command, config=config), 2, f"{keys}: not a key store")
    assert keys.read_text() == '{"keys": [{"selector": "a"'
