"""A 250 is a promise: kill -9 during a burst, restart, and every accepted message still arrives."""

from __future__ import annotations

import asyncio
import email
import json
import smtplib
import threading
import time
from email import policy
from pathlib import Path

from peers.named import free_port
from peers.smtp_sink import Sink

from appliance.message.model import QueuedMessage, Recipient, new_queue_id
from appliance.queue.spool import Spool

CLIENTS = 10
PER_CLIENT = 100
KILL_AFTER = 400  # accepted messages before the kill -9
CONCURRENCY = 10  # delivery.concurrency_per_destination: the most deliveries that can be in flight at the kill


def gateway_config(sink: Sink) -> dict:
    return {
        "roles": ["incoming_gateway"],
        "queue": {"retry_schedule": ["1s"]},
        "delivery": {"concurrency_per_destination": CONCURRENCY},
        "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"{sink.address}:{sink.port}"],
                                                      "verify": "none"}}},
    }


def test_kill_9_during_burst_loses_no_accepted_message(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink()
    server = mailfleet_factory(gateway_config(sink))
    accepted: set[str] = set()
    lock = threading.Lock()
    killed = threading.Event()

    def client(n: int) -> None:
        conn = None
        for i in range(PER_CLIENT):
            token = f"c{n}-m{i}"
            try:
                if conn is None:
                    conn = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)
                conn.sendmail("sender@outside.test", [f"user{n}@fwd.test"],
                              f"Subject: {token}\r\nX-Token: {token}\r\n\r\nbody {token}\r\n".encode())
            except (smtplib.SMTPException, OSError):
                if killed.is_set():
                    return  # the server is gone: an unanswered message is the client's to retry
                raise
            with lock:
                accepted.add(token)
                if len(accepted) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    server.kill()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert killed.is_set(), "the burst ended before the kill"
    before_restart = len(accepted)
    assert before_restart >= KILL_AFTER

    server.start()
    server.wait_for(lambda: not server.queue_ids(), timeout=60, what="the queue to drain after the restart")

    received: dict[str, int] = {}
    for message in sink.messages:
        for line in message.data.split(b"\r\n"):
            if line.startswith(b"X-Token: "):
                token = line[9:].decode()
                received[token] = received.get(token, 0) + 1
    lost = accepted - set(received)
    duplicates = sum(count - 1 for count in received.values())
    print(f"accepted={len(accepted)} received={len(received)} duplicates={duplicates} lost={len(lost)}")
    assert not lost, f"{len(lost)} messages answered 250 never arrived: {sorted(lost)[:10]}"
    # A duplicate can only come from a delivery that was on the wire when the process died.
    assert duplicates <= CONCURRENCY, f"{duplicates} duplicates, more than could be in flight"
    assert all(count <= 2 for count in received.values())
    # Nothing half-written was left behind to be delivered or to linger.
    assert not list((server.data_dir / "spool" / "tmp").iterdir())
    assert not list((server.data_dir / "spool" / "corrupt").iterdir())


def test_torn_spool_file_is_set_aside_not_delivered(mailfleet_factory, smtp_sink) -> None:
    """A message file cut short (power loss before the flush: never answered 250) is never delivered half."""
    sink = smtp_sink()
    server = mailfleet_factory(gateway_config(sink), run=False)
    msg_dir = server.data_dir / "spool" / "msg"
    msg_dir.mkdir(parents=True)
    envelope = b'{"id":"TORN1","from":"a@b.test","arrival":1,"rcpts":[["x@fwd.test","x@fwd.test"]]}'
    (msg_dir / "TORN1").write_bytes(b"MFQ1 %d 5000\n" % len(envelope) + envelope + b"\nSubject: half\r\n")
    server.start()
    server.wait_for(lambda: (server.data_dir / "spool" / "corrupt" / "TORN1").exists(), what="torn file set aside")
    # A whole message sent now goes out through the same queue: once it has arrived, the torn one had its
    # chance to be (wrongly) delivered too.
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.sendmail("a@b.test", ["x@fwd.test"], b"Subject: whole\r\n\r\nx\r\n")
    server.wait_for(lambda: sink.messages, what="the whole message sent after the start")
    assert [m for m in sink.messages if b"Subject: half" in m.data] == []
    assert "TORN1" in server.log() and "header says 5000" in server.log()


def test_sigterm_drains_and_restart_resumes(mailfleet_factory, smtp_sink) -> None:
    """Mail queued for a dead destination survives a clean stop and goes out after the restart."""
    port = free_port(["127.0.0.1"])  # nothing listens there yet: the destination is down
    server = mailfleet_factory(gateway_config(Sink("127.0.0.1", port, None, None)))
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.sendmail("s@outside.test", ["u@fwd.test"], b"Subject: resume\r\n\r\nx\r\n")
    server.wait_for(lambda: "attempt=1" in server.log(), what="a first failed attempt")
    assert server.stop() == 0
    assert "stopped" in server.log()
    assert len(server.queue_ids()) == 1
    revived = smtp_sink(port=port)
    server.start()
    server.wait_for(lambda: len(revived.messages) == 1, what="delivery after the restart")
    assert b"Subject: resume" in revived.messages[0].data


def _damage_after_250(spool_dir: Path, sender: str, rcpt: str, subject: str) -> str:
    """What bit rot leaves of a message committed (answered 250) earlier: a whole file whose data bytes changed."""
    spool = Spool(spool_dir)
    message = QueuedMessage(queue_id=new_queue_id(), mail_from=sender, recipients=[Recipient(rcpt, rcpt)],
                            arrival=time.time(), client="192.0.2.7")
    asyncio.run(spool.commit(message, f"Subject: {subject}\r\n\r\n".encode() + b"x" * 4_000 + b"\r\n"))
    spool.close()
    raw = bytearray(message.path.read_bytes())
    raw[-1_000:-900] = b"\xff" * 100
    message.path.write_bytes(bytes(raw))
    return message.queue_id


def test_a_message_damaged_after_its_250_is_reported_to_its_sender(mailfleet_factory, smtp_sink) -> None:
    """Bit rot in a queued message: at start it is set aside and logged as an error, `queue list` counts it, and
    its sender gets a DSN that says the message is lost (without its headers: they may be damaged too). A file
    whose envelope is unreadable too is set aside and counted, with nobody to tell."""
    sink = smtp_sink()
    server = mailfleet_factory({
        "roles": ["primary", "incoming_gateway"],
        "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
        "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"{sink.address}:{sink.port}"],
                                                      "verify": "none"}}},
    }, run=False)
    spool_dir = server.data_dir / "spool"
    queue_id = _damage_after_250(spool_dir, "alice@home.test", "bob@fwd.test", "rotten")
    (spool_dir / "msg" / "GARBLED1").write_bytes(b"\x00" * 300)

    # Before the start: the listing (which checks lengths, not checksums) names the garbled file and leaves it
    # for the service to set aside.
    listed = server.cli("queue", "list")
    assert listed.returncode == 0, listed.stderr
    assert queue_id in listed.stdout and "GARBLED1  damaged: " in listed.stdout
    assert (spool_dir / "msg" / "GARBLED1").exists()

    server.start()
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, what="the DSN in alice's INBOX")
    assert sorted(p.name for p in (spool_dir / "corrupt").iterdir()) == sorted(["GARBLED1", queue_id])
    dsn = email.message_from_bytes(server.mailbox_files("alice@home.test")[0].read_bytes(), policy=policy.default)
    assert dsn.get_content_type() == "multipart/report"
    parts = dsn.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status"]
    assert "found damaged in this system's queue" in parts[0].get_content()
    per_message, block = parts[1].get_payload()
    assert per_message["X-Mailfleet-Queue-ID"] == queue_id and per_message["Arrival-Date"]
    assert block["Final-Recipient"] == "rfc822; bob@fwd.test"
    assert block["Action"] == "failed" and block["Status"] == "5.3.0"
    log = server.log()
    assert f"ERROR appliance.queue: spool: {spool_dir / 'msg' / queue_id}: content does not match" in log
    assert "GARBLED1: not a spool file (bad header); its sender is unknown" in log
    assert sink.messages == []

    listed = server.cli("queue", "list")
    assert f"-- 2 damaged message(s) set aside in {spool_dir / 'corrupt'}" in listed.stdout
    rows = json.loads(server.cli("queue", "list", "--json").stdout)
    damaged = {row["id"]: row for row in rows if row["damaged"]}
    assert set(damaged) == {queue_id, "GARBLED1"}
    assert damaged[queue_id]["from"] == "alice@home.test" and damaged[queue_id]["where"] == "set aside"
    assert damaged[queue_id]["pending"] == 0 and "checksum" in damaged[queue_id]["reason"]
    assert damaged["GARBLED1"]["from"] is None

    server.restart()  # set aside once, told once (a DSN is queued before the service says it is up)
    server.wait_for(lambda: server.log().count(" up: roles ") == 2, what="the second start")
    assert server.log().count(f"queue_id={queue_id} lost: 1 recipient(s) reported to <alice@home.test>") == 1
    assert server.queue_ids() == []
