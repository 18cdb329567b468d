"""Each role's accept/refuse matrix at RCPT TO, against the real `mailfleet serve`, and where accepted mail goes.

A 250 must be true (the message is in the spool or already delivered) and every refusal must leave nothing
behind. Relaying is an explicit grant: an outgoing gateway refuses with 554 5.7.1 outside its relay_networks
(and its default, empty list relays for nobody); a host with no relay rights at all refuses with 550 5.7.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from peers.mailfleet import RunningMailfleet
from peers.smtp_sink import Sink

from .probes import Evidence, RawSession, marker, needs_ipv6, send, world


@dataclass
class Host:
    server: RunningMailfleet
    evidence: Evidence
    sinks: dict[str, Sink]

    @property
    def port(self) -> int:
        return self.server.smtp_port


@pytest.fixture(scope="module")
def world_sink(sinks) -> Sink:
    """Where a host sends mail it relays (its smarthost): proof that relayed mail left, and of what did not."""
    return sinks()


def _primary_section(password_hash: str) -> dict:
    return {
        "domains": ["example.org", "catchall.example"],
        "users": [{"address": "alice@example.org", "password_hash": password_hash},
                  {"address": "bob@example.org", "password_hash": None}],
        "aliases": {"sales@example.org": ["alice@example.org", "bob@example.org"],
                    "partner@example.org": ["friend@remote.example"]},
        "catch_all": {"catchall.example": "alice@example.org"},
    }


@pytest.fixture(scope="module")
def primary(module_mailfleet, world_sink, password_hash) -> Host:
    server = module_mailfleet({"roles": ["primary"], "primary": _primary_section(password_hash),
                               "delivery": world(world_sink)}, name="primary")
    return Host(server, Evidence(server, (world_sink,)), {"world": world_sink})


@pytest.fixture(scope="module")
def backup(module_mailfleet, sinks, world_sink) -> Host:
    listed, open_list = sinks(), sinks()
    server = module_mailfleet({
        "roles": ["backup_mx"],
        "backup_mx": {"domains": {
            "example.com": {"primary_hosts": [f"127.0.0.1:{listed.port}"],
                            "recipients": ["bob@example.com", "Carol@Example.com"]},
            "example.info": {"primary_hosts": [f"127.0.0.1:{open_list.port}"]},
        }},
        "delivery": world(world_sink)}, name="backup")
    return Host(server, Evidence(server, (listed, open_list, world_sink)),
                {"example.com": listed, "example.info": open_list, "world": world_sink})


@pytest.fixture(scope="module")
def gateway(module_mailfleet, sinks, world_sink) -> Host:
    dest = sinks()
    server = module_mailfleet({
        "roles": ["incoming_gateway"],
        "incoming_gateway": {"domains": {"example.net": {"destinations": [f"127.0.0.1:{dest.port}"]}}},
        "delivery": world(world_sink)}, name="gateway")
    return Host(server, Evidence(server, (dest, world_sink)), {"example.net": dest, "world": world_sink})


def _outgoing(module_mailfleet, world_sink: Sink, networks: list[str] | None, name: str) -> Host:
    section = {} if networks is None else {"relay_networks": networks}
    server = module_mailfleet({"roles": ["outgoing_gateway"], "outgoing_gateway": section,
                               "delivery": world(world_sink)}, name=name, dual_stack=True)
    return Host(server, Evidence(server, (world_sink,)), {"world": world_sink})


@pytest.fixture(scope="module")
def outgoing_default(module_mailfleet, world_sink) -> Host:
    return _outgoing(module_mailfleet, world_sink, None, "out-default")


@pytest.fixture(scope="module")
def outgoing_v4(module_mailfleet, world_sink) -> Host:
    return _outgoing(module_mailfleet, world_sink, ["127.0.0.1/32"], "out-v4")


@pytest.fixture(scope="module")
def outgoing_v6(module_mailfleet, world_sink) -> Host:
    return _outgoing(module_mailfleet, world_sink, ["::1/128"], "out-v6")


def _combined_config(password_hash: str, listed: Sink, dest: Sink, world_sink: Sink, outgoing: bool) -> dict:
    roles = ["primary", "backup_mx", "incoming_gateway"] + (["outgoing_gateway"] if outgoing else [])
    config = {
        "roles": roles,
        "primary": _primary_section(password_hash),
        "backup_mx": {"domains": {"example.com": {"primary_hosts": [f"127.0.0.1:{listed.port}"],
                                                  "recipients": ["bob@example.com"]}}},
        "incoming_gateway": {"domains": {"example.net": {"destinations": [f"127.0.0.1:{dest.port}"]}}},
        "delivery": world(world_sink),
    }
    if outgoing:
        config["outgoing_gateway"] = {"relay_networks": ["127.0.0.1/32"]}
    return config


@pytest.fixture(scope="module")
def combined(module_mailfleet, sinks, world_sink, password_hash) -> Host:
    listed, dest = sinks(), sinks()
    server = module_mailfleet(_combined_config(password_hash, listed, dest, world_sink, outgoing=True),
                              name="combined", dual_stack=True)
    return Host(server, Evidence(server, (listed, dest, world_sink)),
                {"example.com": listed, "example.net": dest, "world": world_sink})


@pytest.fixture(scope="module")
def combined_no_relay(module_mailfleet, sinks, world_sink, password_hash) -> Host:
    listed, dest = sinks(), sinks()
    server = module_mailfleet(_combined_config(password_hash, listed, dest, world_sink, outgoing=False),
                              name="combined-norelay")
    return Host(server, Evidence(server, (listed, dest, world_sink)),
                {"example.com": listed, "example.net": dest, "world": world_sink})


def refused(host: Host, rcpt: str, code: int, enhanced: str, *, source: str | None = None,
            client: str = "127.0.0.1") -> None:
    """RCPT gets exactly `code enhanced`, DATA finds no recipient, and the message is nowhere."""
    mark = marker()
    result = send(host.port, [rcpt], mark, host=client, source=source)
    reply = result.rcpts[rcpt]
    assert (reply.code, reply.lines[-1].split(" ", 1)[0]) == (code, enhanced), reply
    assert len(reply.lines[-1].split(" ", 2)) == 3, f"no reason given: {reply}"
    assert result.data_command.code == 503 and result.data is None, result
    host.evidence.assert_nothing(mark)


def accepted(host: Host, rcpts: list[str], *, source: str | None = None, client: str = "127.0.0.1") -> str:
    """Every recipient 250 at RCPT, the message 250 and on disk at that moment; returns its marker."""
    mark = marker()
    result = send(host.port, rcpts, mark, host=client, source=source)
    for rcpt in rcpts:
        assert result.rcpts[rcpt].code == 250, (rcpt, result.rcpts[rcpt])
    assert result.data is not None and result.data.code == 250, result
    host.evidence.assert_on_disk(result.queue_id, mark)
    return mark


# ---------------------------------------------------------------------------------------------- primary


def test_primary_accepts_a_local_user_and_stores_it_in_the_maildir(primary):
    mark = accepted(primary, ["alice@example.org"])
    assert len(primary.evidence.wait_mailbox("alice@example.org", mark)) == 1
    primary.evidence.wait_spool_empty()
    assert not primary.evidence.sink_messages(mark)


def test_primary_local_part_and_domain_match_without_regard_to_case(primary):
    mark = accepted(primary, ["Alice@EXAMPLE.Org"])
    assert len(primary.evidence.wait_mailbox("alice@example.org", mark)) == 1


def test_primary_refuses_an_unknown_user_at_rcpt_with_5_1_1(primary):
    refused(primary, "nobody@example.org", 550, "5.1.1")


def test_primary_unknown_user_among_known_ones_is_refused_alone(primary):
    mark = marker()
    result = send(primary.port, ["alice@example.org", "nobody@example.org", "bob@example.org"], mark)
    assert [r.code for r in result.rcpts.values()] == [250, 550, 250]
    assert result.rcpts["nobody@example.org"].lines[-1].startswith("5.1.1 ")
    assert result.data is not None and result.data.code == 250
    primary.evidence.wait_mailbox("alice@example.org", mark)
    primary.evidence.wait_mailbox("bob@example.org", mark)
    assert not primary.server.mailbox_files("nobody@example.org")


def test_primary_alias_expands_to_every_member(primary):
    mark = accepted(primary, ["sales@example.org"])
    assert len(primary.evidence.wait_mailbox("alice@example.org", mark)) == 1
    assert len(primary.evidence.wait_mailbox("bob@example.org", mark)) == 1


def test_primary_alias_and_its_member_in_one_transaction_deliver_once(primary):
    mark = accepted(primary, ["sales@example.org", "alice@example.org"])
    primary.evidence.wait_mailbox("bob@example.org", mark)
    primary.evidence.wait_spool_empty()
    assert len(primary.evidence.mailbox_files(mark)) == 2  # alice once, bob once


def test_primary_alias_to_a_remote_address_is_forwarded_out(primary):
    mark = accepted(primary, ["partner@example.org"])
    [got] = primary.evidence.wait_sink(primary.sinks["world"], mark)
    assert got.rcpt_tos == ("friend@remote.example",)


def test_primary_catch_all_takes_unknown_local_parts_of_its_domain(primary):
    mark = accepted(primary, ["whoever-123@catchall.example"])
    assert len(primary.evidence.wait_mailbox("alice@example.org", mark)) == 1


def test_primary_alone_has_no_relay_rights_550_5_7_1(primary):
    refused(primary, "friend@remote.example", 550, "5.7.1")


def test_primary_alone_refuses_relay_even_from_localhost_address(primary):
    """127.0.0.1 is not a relay grant by itself: only relay_networks is."""
    refused(primary, "friend@remote.example", 550, "5.7.1", source="127.0.0.1")


# ---------------------------------------------------------------------------------------------- backup_mx


def test_backup_accepts_a_listed_recipient_and_delivers_to_the_primary_host(backup):
    mark = accepted(backup, ["bob@example.com"])
    [got] = backup.evidence.wait_sink(backup.sinks["example.com"], mark)
    assert got.rcpt_tos == ("bob@example.com",)
    backup.evidence.wait_spool_empty()
    assert len(backup.evidence.sink_messages(mark)) == 1, "delivered elsewhere than to the primary host too"


def test_backup_recipient_list_is_case_insensitive(backup):
    mark = accepted(backup, ["CAROL@example.COM"])
    backup.evidence.wait_sink(backup.sinks["example.com"], mark)


def test_backup_refuses_a_recipient_outside_its_list(backup):
    refused(backup, "mallory@example.com", 550, "5.1.1")


def test_backup_domain_without_a_list_accepts_any_local_part(backup):
    mark = accepted(backup, ["anyone@example.info"])
    backup.evidence.wait_sink(backup.sinks["example.info"], mark)
    assert not [m for m in backup.sinks["example.com"].messages if mark.encode() in m.data]


@pytest.mark.parametrize("rcpt", ["alice@example.org", "friend@remote.example", "bob@sub.example.com"])
def test_backup_refuses_everything_else_550_5_7_1(backup, rcpt):
    refused(backup, rcpt, 550, "5.7.1")


# ---------------------------------------------------------------------------------------------- incoming_gateway


def test_gateway_accepts_a_forwarded_domain_and_delivers_to_its_destination(gateway):
    mark = accepted(gateway, ["anyone@example.net", "Other@EXAMPLE.NET"])
    [got] = gateway.evidence.wait_sink(gateway.sinks["example.net"], mark)
    assert sorted(got.rcpt_tos) == ["Other@example.net", "anyone@example.net"]
    gateway.evidence.wait_spool_empty()
    assert len(gateway.evidence.sink_messages(mark)) == 1, "delivered elsewhere than to the destination too"


@pytest.mark.parametrize("rcpt", ["alice@example.org", "friend@remote.example", "x@mail.example.net"])
def test_gateway_refuses_other_domains_550_5_7_1(gateway, rcpt):
    refused(gateway, rcpt, 550, "5.7.1")


# ---------------------------------------------------------------------------------------------- outgoing_gateway


def test_outgoing_default_whitelist_relays_for_nobody_not_even_localhost(outgoing_default):
    refused(outgoing_default, "friend@remote.example", 554, "5.7.1", source="127.0.0.1")
    refused(outgoing_default, "friend@remote.example", 554, "5.7.1", source="127.0.0.2")


@needs_ipv6
def test_outgoing_default_whitelist_relays_for_nobody_over_ipv6(outgoing_default):
    refused(outgoing_default, "friend@remote.example", 554, "5.7.1", client="::1")


def test_outgoing_relays_for_a_whitelisted_ipv4_client(outgoing_v4):
    mark = accepted(outgoing_v4, ["friend@remote.example", "other@elsewhere.example"], source="127.0.0.1")
    [got] = outgoing_v4.evidence.wait_sink(outgoing_v4.sinks["world"], mark)
    assert sorted(got.rcpt_tos) == ["friend@remote.example", "other@elsewhere.example"]


def test_outgoing_refuses_an_ipv4_client_outside_the_cidr_554_5_7_1(outgoing_v4):
    refused(outgoing_v4, "friend@remote.example", 554, "5.7.1", source="127.0.0.2")


@needs_ipv6
def test_outgoing_ipv4_cidr_does_not_cover_ipv6_clients(outgoing_v4):
    refused(outgoing_v4, "friend@remote.example", 554, "5.7.1", client="::1")


@needs_ipv6
def test_outgoing_relays_for_a_whitelisted_ipv6_client(outgoing_v6):
    mark = accepted(outgoing_v6, ["friend@remote.example"], client="::1")
    outgoing_v6.evidence.wait_sink(outgoing_v6.sinks["world"], mark)


@needs_ipv6
def test_outgoing_ipv6_cidr_does_not_cover_ipv4_clients(outgoing_v6):
    refused(outgoing_v6, "friend@remote.example", 554, "5.7.1", source="127.0.0.1")


# ---------------------------------------------------------------------------------------------- roles combined


def test_combined_host_takes_each_kind_of_recipient_in_one_transaction(combined):
    mark = accepted(combined, ["alice@example.org", "bob@example.com", "anyone@example.net",
                               "friend@remote.example"], source="127.0.0.1")
    combined.evidence.wait_mailbox("alice@example.org", mark)
    [backup] = combined.evidence.wait_sink(combined.sinks["example.com"], mark)
    [forward] = combined.evidence.wait_sink(combined.sinks["example.net"], mark)
    [relayed] = combined.evidence.wait_sink(combined.sinks["world"], mark)
    assert (backup.rcpt_tos, forward.rcpt_tos, relayed.rcpt_tos) == (
        ("bob@example.com",), ("anyone@example.net",), ("friend@remote.example",))


def test_combined_host_refuses_relay_from_outside_the_whitelist_554(combined):
    """Served domains still work for the outsider; only the relay recipient is refused."""
    mark = marker()
    result = send(combined.port, ["alice@example.org", "friend@remote.example", "anyone@example.net"], mark,
                  source="127.0.0.2")
    assert [r.code for r in result.rcpts.values()] == [250, 554, 250]
    assert result.rcpts["friend@remote.example"].lines[-1].startswith("5.7.1 ")
    assert result.data is not None and result.data.code == 250
    combined.evidence.wait_mailbox("alice@example.org", mark)
    combined.evidence.wait_sink(combined.sinks["example.net"], mark)
    combined.evidence.wait_spool_empty()
    assert not [m for m in combined.sinks["world"].messages if mark.encode() in m.data]


def test_combined_host_keeps_each_roles_refusals(combined):
    refused(combined, "nobody@example.org", 550, "5.1.1", source="127.0.0.2")
    refused(combined, "mallory@example.com", 550, "5.1.1", source="127.0.0.2")
    refused(combined, "nobody@example.org", 550, "5.1.1", source="127.0.0.1")


@needs_ipv6
def test_combined_host_refuses_relay_over_ipv6_outside_the_whitelist(combined):
    refused(combined, "friend@remote.example", 554, "5.7.1", client="::1")


def test_host_without_outgoing_role_refuses_relay_550_even_from_localhost(combined_no_relay):
    refused(combined_no_relay, "friend@remote.example", 550, "5.7.1", source="127.0.0.1")
    mark = accepted(combined_no_relay, ["alice@example.org", "bob@example.com", "x@example.net"])
    combined_no_relay.evidence.wait_mailbox("alice@example.org", mark)


# ---------------------------------------------------------------------------------------------- reload


def test_sighup_reload_changes_the_relay_policy_without_dropping_sessions(module_mailfleet, world_sink):
    host = _outgoing(module_mailfleet, world_sink, None, "out-reload")
    refused(host, "friend@remote.example", 554, "5.7.1", source="127.0.0.1")
    with RawSession("127.0.0.1", host.port, "127.0.0.1") as open_session:
        open_session.ehlo()
        config = dict(host.server.config)
        config["outgoing_gateway"] = {"relay_networks": ["127.0.0.1/32"]}
        host.server.reload(config)
        host.server.wait_for(lambda: "config reloaded" in host.server.log(), what="the reload")
        assert open_session.cmd("NOOP").code == 250, "the reload dropped an open session"
        assert open_session.cmd("MAIL FROM:<a@client.example>").code == 250
        assert open_session.cmd("RCPT TO:<friend@remote.example>").code == 250
    mark = accepted(host, ["friend@remote.example"], source="127.0.0.1")
    host.evidence.wait_sink(world_sink, mark)
    refused(host, "friend@remote.example", 554, "5.7.1", source="127.0.0.2")


def test_sighup_with_a_broken_config_keeps_the_running_policy(module_mailfleet, world_sink):
    host = _outgoing(module_mailfleet, world_sink, None, "out-broken-reload")
    broken = dict(host.server.config)
    broken["outgoing_gateway"] = {"relay_networks": ["0.0.0.0/0", "not-a-cidr"]}
    host.server.reload(broken)
    host.server.wait_for(lambda: "reload refused" in host.server.log(), what="the refused reload")
    refused(host, "friend@remote.example", 554, "5.7.1", source="127.0.0.1")
