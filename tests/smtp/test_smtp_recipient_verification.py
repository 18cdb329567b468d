"""Recipient verification on the incoming gateway and the backup MX, against the real `mailfleet serve`: each
refuses at RCPT TO (550 5.1.1) what the primary behind it would refuse, from the list the roles render or by an
SMTP callout to the primary, so that mail to an unknown user is never accepted and bounced to a forged sender
(backscatter). The primary is a running appliance; the clients come from 127.0.36.0/24.
"""

from __future__ import annotations

import pytest
from peers.named import free_port

from .probes import Evidence, marker, send, world
from .test_smtp_roles import Host, accepted, refused

CLIENT = "127.0.36.1"
FORGED = "victim@victim.example"  # the forged sender a bounce would go to: the world sink stands for its MX


@pytest.fixture(scope="module")
def world_sink(sinks):
    """Every host's smarthost: bounces (DSNs) to the forged sender would arrive here."""
    return sinks()


@pytest.fixture(scope="module")
def primary(module_mailfleet, world_sink, password_hash) -> Host:
    server = module_mailfleet({
        "roles": ["primary"],
        "primary": {
            "domains": ["example.org", "catchall.example"],
            "users": [{"address": "alice@example.org", "password_hash": password_hash}],
            "aliases": {"postmaster@example.org": ["alice@example.org"]},
            "catch_all": {"catchall.example": "alice@example.org"},
        },
        "delivery": world(world_sink)}, name="primary")
    return Host(server, Evidence(server, (world_sink,)), {"world": world_sink})


def _at(host: Host) -> str:
    return f"127.0.0.1:{host.port}"


def _gateway(module_mailfleet, world_sink, primary: Host, name: str, example: dict | None = None,
             catchall: dict | None = None) -> Host:
    """An incoming gateway forwarding both of the primary's domains, with these verification settings."""
    domains = {"example.org": {"destinations": [_at(primary)], **(example or {})},
               "catchall.example": {"destinations": [_at(primary)], **(catchall or {})}}
    server = module_mailfleet({"roles": ["incoming_gateway"], "incoming_gateway": {"domains": domains},
                               "smtp": {"workers": 2}, "delivery": world(world_sink)}, name=name)
    return Host(server, Evidence(server, (world_sink,)), {"world": world_sink})


@pytest.fixture(scope="module")
def gateway_callout(module_mailfleet, world_sink, primary) -> Host:
    return _gateway(module_mailfleet, world_sink, primary, "gw-callout")  # callout: the default without a list


@pytest.fixture(scope="module")
def gateway_list(module_mailfleet, world_sink, primary) -> Host:
    return _gateway(module_mailfleet, world_sink, primary, "gw-list",
                    example={"recipients": ["alice@example.org", "postmaster@example.org"]},
                    catchall={"recipients": ["@catchall.example"]})


@pytest.fixture(scope="module")
def gateway_open(module_mailfleet, world_sink, primary) -> Host:
    return _gateway(module_mailfleet, world_sink, primary, "gw-open", example={"verify": "none"})


def _backup(module_mailfleet, world_sink, hosts: list[str], name: str, callout: dict | None = None,
            **entry: object) -> Host:
    section: dict = {"domains": {"example.org": {"primary_hosts": hosts, **entry}}}
    if callout:
        section["callout"] = callout
    server = module_mailfleet({"roles": ["backup_mx"], "backup_mx": section, "delivery": world(world_sink)},
                              name=name)
    return Host(server, Evidence(server, (world_sink,)), {"world": world_sink})


@pytest.fixture(scope="module")
def backup_list(module_mailfleet, world_sink, primary) -> Host:
    return _backup(module_mailfleet, world_sink, [_at(primary)], "bk-list",
                   recipients=["alice@example.org", "postmaster@example.org"])


@pytest.fixture(scope="module")
def backup_callout(module_mailfleet, world_sink, primary) -> Host:
    return _backup(module_mailfleet, world_sink, [_at(primary)], "bk-callout")


def _nowhere() -> str:
    """A loopback port where nothing listens: a destination that is down."""
    return f"127.0.0.1:{free_port(['127.0.0.1'])}"


# ---------------------------------------------------------------------------------------------- the gateway


@pytest.mark.parametrize("gateway", ["gateway_callout", "gateway_list"])
def test_gateway_refuses_an_unknown_user_of_a_forwarded_domain_at_rcpt(gateway, request):
    refused(request.getfixturevalue(gateway), "nobody@example.org", 550, "5.1.1", source=CLIENT)


@pytest.mark.parametrize("gateway", ["gateway_callout", "gateway_list"])
@pytest.mark.parametrize("rcpt", ["alice@example.org", "postmaster@example.org", "anything@catchall.example"])
def test_gateway_accepts_users_aliases_and_catch_all_and_they_reach_the_primary(gateway, rcpt, request, primary):
    host = request.getfixturevalue(gateway)
    mark = accepted(host, [rcpt], source=CLIENT)
    assert len(primary.evidence.wait_mailbox("alice@example.org", mark)) == 1


def test_gateway_accepts_the_known_and_refuses_the_unknown_in_one_transaction(gateway_callout, primary):
    mark = marker()
    result = send(gateway_callout.port, ["alice@example.org", "ghost@example.org"], mark, source=CLIENT)
    assert [r.code for r in result.rcpts.values()] == [250, 550]
    assert result.rcpts["ghost@example.org"].lines[-1].startswith("5.1.1 ")
    assert result.data is not None and result.data.code == 250
    primary.evidence.wait_mailbox("alice@example.org", mark)
    gateway_callout.evidence.wait_spool_empty()


# ---------------------------------------------------------------------------------------------- backscatter


def test_backscatter_reproduced_when_verification_is_off(gateway_open, world_sink):
    """verify: none is the finding of issue 15: the gateway takes the unknown user, the primary refuses it, and the
    gateway bounces it to the forged sender."""
    mark = marker()
    result = send(gateway_open.port, ["nobody@example.org"], mark, source=CLIENT, mail_from=FORGED)
    assert result.rcpts["nobody@example.org"].code == 250 and result.data is not None and result.data.code == 250
    [bounce] = gateway_open.evidence.wait_sink(world_sink, mark)
    assert bounce.rcpt_tos == (FORGED,) and bounce.mail_from == "<>"  # a DSN, RFC 3464


@pytest.mark.parametrize("gateway", ["gateway_callout", "gateway_list"])
def test_no_backscatter_with_verification_the_forged_sender_gets_nothing(gateway, request, world_sink):
    host = request.getfixturevalue(gateway)
    mark = marker()
    result = send(host.port, ["nobody@example.org"], mark, source=CLIENT, mail_from=FORGED)
    assert result.rcpts["nobody@example.org"].code == 550 and result.data is None
    # Nothing was accepted, so nothing is queued that could bounce: the spool is empty, the forged sender's MX
    # got nothing.
    host.evidence.assert_nothing(mark)
    assert not [m for m in world_sink.messages if FORGED in m.rcpt_tos and mark.encode() in m.data]


# ---------------------------------------------------------------------------------------------- the backup MX


@pytest.mark.parametrize("backup", ["backup_list", "backup_callout"])
def test_backup_mx_refuses_an_unknown_user_at_rcpt(backup, request):
    refused(request.getfixturevalue(backup), "nobody@example.org", 550, "5.1.1", source=CLIENT)


@pytest.mark.parametrize("backup", ["backup_list", "backup_callout"])
def test_backup_mx_accepts_a_known_user_and_delivers_it_to_the_primary(backup, request, primary):
    mark = accepted(request.getfixturevalue(backup), ["alice@example.org"], source=CLIENT)
    primary.evidence.wait_mailbox("alice@example.org", mark)


def test_backup_mx_with_its_list_accepts_while_the_primary_is_down(module_mailfleet, world_sink):
    """What the roles render for a fleet primary: the list needs no answer from the primary, so the backup MX
    does its job while the primary is down, and still refuses the unknown."""
    host = _backup(module_mailfleet, world_sink, [_nowhere()], "bk-down-list", recipients=["alice@example.org"])
    mark = accepted(host, ["alice@example.org"], source=CLIENT)
    assert host.evidence.spool_files(mark), "the backup MX holds it for the primary"
    refused(host, "nobody@example.org", 550, "5.1.1", source=CLIENT)


def test_backup_mx_callout_with_the_primary_down_tempfails(module_mailfleet, world_sink):
    host = _backup(module_mailfleet, world_sink, [_nowhere()], "bk-down-callout")
    refused(host, "alice@example.org", 450, "4.4.1", source=CLIENT)


def test_backup_mx_callout_unreachable_accept_takes_the_mail(module_mailfleet, world_sink):
    host = _backup(module_mailfleet, world_sink, [_nowhere()], "bk-down-accept", callout={"unreachable": "accept"})
    mark = accepted(host, ["alice@example.org"], source=CLIENT)
    assert host.evidence.spool_files(mark)


# ---------------------------------------------------------------------------------------------- the cache


def test_callout_answers_are_cached_shared_by_the_acceptors_and_outlive_the_destination(
        module_mailfleet, sinks, world_sink):
    """Positive and negative answers: one callout each, whatever the number of sessions (on both acceptor
    processes); once the destination is down the cached answers still hold and a new address tempfails."""
    destination = sinks(rcpt_replies={"ghost@cached.example": "550 5.1.1 no such user"})
    server = module_mailfleet({
        "roles": ["incoming_gateway"], "smtp": {"workers": 2}, "delivery": world(world_sink),
        "incoming_gateway": {"domains": {"cached.example": {
            "destinations": [f"{destination.address}:{destination.port}"]}}}}, name="gw-cache")
    host = Host(server, Evidence(server, (world_sink, destination)), {"cached.example": destination})
    for round_ in range(4):  # a session each, from four clients: the acceptors share them out
        accepted(host, ["known@cached.example"], source=f"127.0.36.{10 + round_}")
        refused(host, "ghost@cached.example", 550, "5.1.1", source=f"127.0.36.{10 + round_}")
    server.wait_for(lambda: not server.queue_ids(), what="the gateway's queue to empty")
    asked = [r.lower() for r in destination.handler.rcpts]
    delivered = sum(1 for m in destination.messages if "known@cached.example" in m.rcpt_tos)
    assert delivered == 4
    assert (asked.count("known@cached.example") - delivered, asked.count("ghost@cached.example")) == (1, 1)
    assert (server.data_dir / "recipient-callouts.sqlite").exists()
    destination.stop()
    accepted(host, ["known@cached.example"], source=CLIENT)
    refused(host, "ghost@cached.example", 550, "5.1.1", source=CLIENT)
    refused(host, "new@cached.example", 450, "4.4.1", source=CLIENT)


# ---------------------------------------------------------------------------------------------- reload


def test_a_new_alias_on_the_list_is_accepted_after_a_reload(module_mailfleet, world_sink, primary):
    """What the roles do when an alias is added to the inventory: render the longer list and reload."""
    host = _backup(module_mailfleet, world_sink, [_at(primary)], "bk-reload", recipients=["alice@example.org"])
    refused(host, "postmaster@example.org", 550, "5.1.1", source=CLIENT)
    config = dict(host.server.config)
    config["backup_mx"] = {"domains": {"example.org": {"primary_hosts": [_at(primary)],
                                                       "recipients": ["alice@example.org",
                                                                      "postmaster@example.org"]}}}
    mark = host.server.log_mark()
    host.server.reload(config)
    host.server.wait_for_log("config reloaded", since=mark)
    accepted(host, ["postmaster@example.org"], source=CLIENT)
