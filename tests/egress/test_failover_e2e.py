"""The pool of sending addresses as an administrator meets it: a running outgoing gateway with two egress
addresses, a real MX that refuses one of them with a DNSBL-style 554, a real rbldnsd listing it behind a real
BIND. The address is suspended, the mail leaves from the other one, and the address comes back once delisted."""

from __future__ import annotations

import json

from .conftest import EGRESS1, EGRESS2, ZONE, send, write_zone


def _states(server) -> dict[str, dict]:
    result = server.cli("egress", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["address"]: entry for entry in json.loads(result.stdout)}


def _from(world, count: int, server) -> list[tuple[str, str]]:
    server.wait_for(lambda: len(world.mx.messages) >= count, what=f"{count} message(s) at the MX")
    return [(m.peer_address, m.helo) for m in world.mx.messages]


def test_a_listed_address_is_suspended_and_comes_back_after_delisting(mailfleet_factory, world) -> None:
    world.handler.blocked.add(EGRESS1)  # the MX uses the same list, as receivers do
    # 127.0.44.2's answer is the zone's error code ("query refused"), which is never a listing.
    write_zone(world.rbl, {EGRESS1: "127.0.0.2", EGRESS2: "127.255.255.254"})
    server = mailfleet_factory(world.gateway())
    server.wait_for_log(f"egress {EGRESS1} suspended (dnsbl): listed in {ZONE} (127.0.0.2)")
    server.wait_for_log(f"egress {EGRESS2}: no verdict from {ZONE}: unknown (error code 127.255.255.254")

    send(server, "a@dest1.test")
    assert _from(world, 1, server) == [(EGRESS2, "out2.test")]
    states = _states(server)
    assert states[EGRESS1]["state"] == "suspended" and states[EGRESS1]["why"] == "dnsbl"
    assert f"{ZONE} (127.0.0.2)" in states[EGRESS1]["evidence"]
    assert states[EGRESS2]["state"] == "healthy" and states[EGRESS2]["helo"] == "out2.test"

    since = server.log_mark()
    world.handler.blocked.clear()
    write_zone(world.rbl, {EGRESS2: "127.255.255.254"})
    server.wait_for_log(f"egress {EGRESS1} resumed: clear for", since=since)
    assert _states(server)[EGRESS1]["state"] == "healthy"
    send(server, "b@dest2.test")
    assert _from(world, 2, server)[1] == (EGRESS1, "out1.test")  # back on the first address, in config order


def test_refusals_from_several_destinations_suspend_one_odd_refusal_does_not(mailfleet_factory, world) -> None:
    world.handler.blocked.add(EGRESS1)
    server = mailfleet_factory(world.gateway({"dnsbl": [], "rejection_threshold": 2, "clear_for": "1h"}))

    send(server, "a@dest1.test")
    server.wait_for_log(f"egress {EGRESS1}: dest1.test refused it as blocked (1 of 2 destinations")
    # One destination's refusal defers the mail (it is about our address, not the message) and suspends nothing.
    assert _states(server)[EGRESS1]["state"] == "healthy"
    assert world.mx.messages == [] and len(server.queue_ids()) == 1
    assert "bounced" not in server.log()

    send(server, "b@dest2.test")
    server.wait_for_log(f"egress {EGRESS1} suspended (rejections): dest1.test: 554 5.7.1")
    state = _states(server)[EGRESS1]
    assert state["why"] == "rejections" and "dest2.test: 554 5.7.1" in state["evidence"]
    assert "blocked using zen.test" in state["evidence"]
    # Both messages are retried from the healthy address; neither bounced.
    assert sorted(_from(world, 2, server)) == [(EGRESS2, "out2.test")] * 2
    assert sorted(r for m in world.mx.messages for r in m.rcpt_tos) == ["a@dest1.test", "b@dest2.test"]
    server.wait_for(lambda: server.queue_ids() == [], what="the queue to empty")
    assert "bounced" not in server.log()


def test_every_address_suspended_keeps_mail_queued_past_its_lifetime(mailfleet_factory, world) -> None:
    server = mailfleet_factory(world.gateway({"dnsbl": []}, queue={"retry_schedule": ["1s"], "lifetime": "2s"}))
    for address in (EGRESS1, EGRESS2):
        result = server.cli("egress", "suspend", address, "--reason", "moving to a new provider")
        assert result.returncode == 0, result.stderr
    send(server, "a@dest1.test")
    [queue_id] = server.queue_ids()
    server.wait_for_log("ALERT: no healthy sending address for dest1.test: every IPv4 egress address is suspended")
    # Attempt 4 comes at least 3 s after the arrival: past the 2 s lifetime, and still pending.
    server.wait_for_log(f"queue_id={queue_id} rcpt=a@dest1.test route=mx:dest1.test attempt=4 status=pending")
    log = server.log()
    assert "4.4.7 gave up" not in log and "bounced" not in log
    assert log.count("ALERT") == 1  # once, not at every attempt
    assert server.queue_ids() == [queue_id] and world.mx.messages == []

    result = server.cli("egress", "resume", EGRESS2)
    assert result.returncode == 0 and result.stdout.strip() == f"resumed {EGRESS2}"
    assert _from(world, 1, server) == [(EGRESS2, "out2.test")]
    server.wait_for(lambda: server.queue_ids() == [], what="the queue to empty")
