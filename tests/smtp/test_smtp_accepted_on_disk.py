"""A 250 is a promise: the message is on disk at that moment, survives a kill -9, and is delivered later.

A backup MX whose primary host is down keeps what it accepts: the tests look at the spool file itself right
after the 250, kill the server without warning, restart it, and then let the primary come up.
"""

from __future__ import annotations

import pytest
from peers.named import free_port
from peers.smtp_sink import start_sink

from .probes import Evidence, marker, message, send


@pytest.fixture(scope="module")
def primary_port() -> int:
    return free_port(["127.0.0.1"])


@pytest.fixture(scope="module")
def host(module_mailfleet, primary_port, sinks) -> Evidence:
    relayed = sinks()
    server = module_mailfleet({
        "roles": ["backup_mx"],
        "backup_mx": {"domains": {"example.com": {"primary_hosts": [f"127.0.0.1:{primary_port}"],
                                                  "recipients": ["bob@example.com"]}}},
        "delivery": {"smarthost": f"127.0.0.1:{relayed.port}", "connect_timeout": "2s"},
    }, name="on-disk")
    return Evidence(server, (relayed,))


def test_accepted_message_is_in_the_spool_survives_kill_9_and_is_delivered_later(host, primary_port):
    mark = marker()
    body = message(mark, extra_body="second line\r\n")
    result = send(host.server.smtp_port, ["bob@example.com", "mallory@example.com"], mark, body=body)
    assert result.rcpts["mallory@example.com"].code == 550
    assert result.data is not None and result.data.code == 250, result
    queue_id = result.queue_id
    spool_file = host.server.data_dir / "spool" / "msg" / queue_id
    assert spool_file.exists(), "250 given but no spool file"
    _, envelope, data = spool_file.read_bytes().split(b"\n", 2)  # queue/spool.py: header, envelope JSON, data
    assert b"bob@example.com" in envelope and b"mallory" not in envelope
    assert data.endswith(body)
    assert not list((host.server.data_dir / "spool" / "tmp").iterdir()), "a half-written file stayed in tmp/"

    host.server.kill()
    host.server.start()
    assert queue_id in host.server.queue_ids()
    listed = host.server.cli("queue", "list")
    assert listed.returncode == 0 and queue_id in listed.stdout, listed

    primary = start_sink("127.0.0.1", primary_port)  # the primary comes back
    try:
        flushed = host.server.cli("queue", "flush")
        assert flushed.returncode == 0, flushed
        [got] = host.wait_sink(primary, mark)
        assert got.rcpt_tos == ("bob@example.com",) and body in got.data
        host.wait_spool_empty()
        assert len([m for m in primary.messages if mark.encode() in m.data]) == 1
    finally:
        primary.stop()
