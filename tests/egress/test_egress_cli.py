"""`mailfleet egress list | suspend | resume` against a running gateway: the service follows at once, the state
survives a restart, and a mistaken address is refused in one line."""

from __future__ import annotations

import json

import yaml

from tests.cli.command import assert_one_line_error, mailfleet

from .conftest import EGRESS1, EGRESS2, send


def _from(world, server, count: int) -> tuple[str, str]:
    server.wait_for(lambda: len(world.mx.messages) >= count, what=f"{count} message(s) at the MX")
    last = world.mx.messages[count - 1]
    return last.peer_address, last.helo


def test_suspend_and_resume_take_effect_at_once_and_survive_a_restart(mailfleet_factory, world) -> None:
    server = mailfleet_factory(world.gateway({"dnsbl": []}))
    listing = server.cli("egress", "list")
    assert listing.returncode == 0, listing.stderr
    assert f"{EGRESS1}  helo=out1.test  healthy  since -" in listing.stdout

    send(server, "a@dest1.test")
    assert _from(world, server, 1) == (EGRESS1, "out1.test")

    result = server.cli("egress", "suspend", EGRESS1, "--reason", "PTR not set up yet")
    assert (result.returncode, result.stdout.strip()) == (0, f"suspended {EGRESS1} until resumed: PTR not set up yet")
    send(server, "b@dest2.test")
    assert _from(world, server, 2) == (EGRESS2, "out2.test")

    server.restart()
    [first, second] = json.loads(server.cli("egress", "list", "--json").stdout)
    assert first["address"] == EGRESS1 and first["state"] == "suspended" and first["source"] == "admin"
    assert first["evidence"] == "PTR not set up yet" and first["since"] is not None
    assert second["state"] == "healthy"
    send(server, "c@dest3.test")
    assert _from(world, server, 3) == (EGRESS2, "out2.test")
    # Clear DNSBL rounds (none configured) never end an administrator's suspension.
    assert f"egress {EGRESS1} resumed" not in server.log()

    result = server.cli("egress", "resume", EGRESS1)
    assert (result.returncode, result.stdout.strip()) == (0, f"resumed {EGRESS1}")
    send(server, "d@dest1.test")
    assert _from(world, server, 4) == (EGRESS1, "out1.test")


def test_an_address_outside_the_pool_is_refused(tmp_path) -> None:
    config = tmp_path / "mailfleet.yml"
    base = {"roles": ["outgoing_gateway"], "hostname": "gw.test", "data_dir": str(tmp_path / "data"),
            "outgoing_gateway": {"egress": [{"address": EGRESS1}]}}
    config.write_text(yaml.safe_dump(base))
    assert_one_line_error(mailfleet("egress", "suspend", "192.0.2.9", config=config), 2,
                          "192.0.2.9 is not in outgoing_gateway.egress", EGRESS1)
    assert_one_line_error(mailfleet("egress", "resume", "not-an-ip", config=config), 2, "is not an IP address")
    assert_one_line_error(mailfleet("egress", "suspend", EGRESS1, "--reason", " ", config=config), 2, "--reason")
    config.write_text(yaml.safe_dump({**base, "outgoing_gateway": {}}))
    assert_one_line_error(mailfleet("egress", "list", config=config), 2, "has no egress pool")
    result = mailfleet("egress", "resume", EGRESS1, config=config)
    assert result.returncode == 2
