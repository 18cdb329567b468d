"""The queue process's periodic pass: a selector left pending by `mailfleet dkim rotate --no-wait` becomes
active in the running service once DNS serves its record, with no command, and the change is logged."""

from __future__ import annotations

import base64
import json
import os

from peers.named import start_named

DOMAIN = "example.test"
TSIG = ("mf-update", "hmac-sha256", base64.b64encode(os.urandom(32)).decode())


def test_the_running_service_switches_to_a_selector_once_dns_serves_it(mailfleet_factory, tmp_path) -> None:
    named = start_named(tmp_path / "named", {DOMAIN: ""}, address="127.0.0.1", update_key=TSIG)
    try:
        config = {"roles": ["primary"], "primary": {"domains": [DOMAIN]},
                  "dns": {"nameservers": ["127.0.0.1"], "port": named.port, "timeout": "2s"},
                  "dkim": {"enabled": True, "check_interval": "1s",
                           "publish": {"server": "127.0.0.1", "port": named.port, "key_name": TSIG[0],
                                       "key_secret": TSIG[2]}}}
        server = mailfleet_factory(config, address="127.0.42.1")
        since = server.log_mark()
        rotated = server.cli("dkim", "rotate", DOMAIN, "--no-wait")
        assert rotated.returncode == 0, rotated.stderr
        assert rotated.stdout.splitlines()[-1].startswith("left pending")
        server.wait_for_log("pending -> active (seen in DNS)", since=since, count=2)
        keys = json.loads((server.data_dir / "dkim" / DOMAIN / "keys.json").read_text())["keys"]
        assert {(k["algorithm"], k["state"]) for k in keys} == {("rsa-sha256", "active"), ("ed25519-sha256", "active")}
        assert server.cli("dkim", "check").stdout == "nothing changed\n"
    finally:
        named.stop()
