"""`mailfleet quarantine list|show|release|delete` as an administrator uses them, against a running Mailfleet.

The messages are put into the quarantine directory with the store's own API (what a content check's verdict
does through the intake; tests/quarantine/test_target.py covers that path). What is checked is what the
administrator sees (exit code, lines printed) and where the mail ends up: in a local user's INBOX, at the
forwarding destination (a real SMTP sink), or nowhere after a delete.
"""

from __future__ import annotations

import json
import subprocess
import time

from peers.named import free_port

from appliance.message.model import (
    META_CRLF_ONLY,
    META_FOLDER,
    META_QUARANTINE,
    QueuedMessage,
    Recipient,
    new_queue_id,
)
from appliance.quarantine.store import Quarantine

from .command import MAILFLEET, assert_one_line_error

VIRUS = {"scanner": "clamav", "virus": "Eicar-Test-Signature", "reason": "virus Eicar-Test-Signature"}
SPAM = {"scanner": "rspamd", "score": 17.2, "reason": "spam score 17.2 over 15"}


def _data(subject: str) -> bytes:
    # A line starting with "." : the delivery to the sink must dot-stuff it (RFC 5321 §4.5.2) and the sink
    # unstuff it, as for any message; a released one is no different.
    return (f"Received: from client.test ([192.0.2.7])\r\n\tby mf.test.example (Mailfleet) with ESMTP\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nbody\r\n.dot line\r\n").encode()


def hold(server, rcpts: list[str], subject: str, verdict: dict) -> tuple[str, bytes]:
    """Put one message into the server's quarantine, as the intake does when a check holds it."""
    data = _data(subject)
    message = QueuedMessage(queue_id=new_queue_id(), mail_from="sender@outside.test",
                            recipients=[Recipient(a, a) for a in rcpts], arrival=time.time(), client="192.0.2.7",
                            helo="client.test", meta={META_CRLF_ONLY: True, META_FOLDER: "Junk",
                                                      META_QUARANTINE: verdict})
    Quarantine(server.data_dir / "quarantine").put(message, data)
    return message.queue_id, data


def primary_and_forwarder(sink_port: int) -> dict:
    """alice@home.test is a local mailbox; mail for fwd.test goes on to the peer on sink_port."""
    return {
        "roles": ["primary", "incoming_gateway"],
        "queue": {"retry_schedule": ["1h"]},
        "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
        "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{sink_port}"]}}},
    }


def test_list_show_and_delete(mailfleet_factory) -> None:
    server = mailfleet_factory(primary_and_forwarder(free_port(["127.0.0.1"])))
    assert server.cli("quarantine", "list").stdout == "quarantine is empty\n"
    virus, virus_data = hold(server, ["alice@home.test"], "virus", VIRUS)
    spam, _ = hold(server, ["bob@fwd.test", "carol@fwd.test"], "spam", SPAM)

    listing = server.cli("quarantine", "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith(virus) and lines[0].endswith("<sender@outside.test>  virus Eicar-Test-Signature")
    assert lines[1] == "    to alice@home.test"
    assert lines[2].startswith(spam) and lines[2].endswith("spam score 17.2 over 15")
    assert lines[3] == "    to bob@fwd.test, carol@fwd.test"
    assert lines[4] == "-- 2 message(s)"
    rows = json.loads(server.cli("quarantine", "list", "--json").stdout)
    assert [(r["id"], r["verdict"], r["recipients"], r["size"], r["damaged"]) for r in rows] == [
        (virus, VIRUS, ["alice@home.test"], len(virus_data), False),
        (spam, SPAM, ["bob@fwd.test", "carol@fwd.test"], len(_data("spam")), False)]

    shown = server.cli("quarantine", "show", virus)
    assert shown.returncode == 0, shown.stderr
    assert "Verdict: virus Eicar-Test-Signature\n" in shown.stdout
    assert '"virus": "Eicar-Test-Signature"' in shown.stdout
    assert "Sender: <sender@outside.test>\nRecipient: alice@home.test\n" in shown.stdout
    assert shown.stdout.endswith("\nSubject: virus\nMessage-ID: <virus@client.test>\n")  # headers, no body
    assert "body" not in shown.stdout
    raw = subprocess.run([*MAILFLEET, "--config", str(server.config_path), "quarantine", "show", "--raw", virus],
                         capture_output=True, timeout=60)
    assert (raw.returncode, raw.stdout) == (0, virus_data)  # byte for byte, to save or to feed a scanner

    deleted = server.cli("quarantine", "delete", spam, "0123456789ABCDEF")
    assert deleted.returncode == 1
    assert deleted.stdout == f"deleted {spam}\n"
    assert deleted.stderr == "mailfleet: no message 0123456789ABCDEF in the quarantine\n"
    assert [r["id"] for r in json.loads(server.cli("quarantine", "list", "--json").stdout)] == [virus]
    assert server.queue_ids() == []  # a delete delivers nothing


def test_unknown_malformed_and_damaged_ids_are_one_line_errors(mailfleet_factory) -> None:
    server = mailfleet_factory(primary_and_forwarder(free_port(["127.0.0.1"])))
    for action in ("show", "release", "delete"):
        assert_one_line_error(server.cli("quarantine", action, "0123456789ABCDEF"), 1,
                              "no message 0123456789ABCDEF in the quarantine")
        assert_one_line_error(server.cli("quarantine", action, "../spool/msg"), 1, "'../spool/msg'",
                              "is not a queue ID")
    torn, _ = hold(server, ["alice@home.test"], "torn", VIRUS)
    path = server.data_dir / "quarantine" / "msg" / torn
    path.write_bytes(path.read_bytes()[:-5])
    listing = server.cli("quarantine", "list")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert listing.stdout.startswith(f"{torn}  damaged: {path}: ")
    assert "-- 1 damaged file(s)" in listing.stdout
    assert_one_line_error(server.cli("quarantine", "release", torn), 1, "torn write")
    assert server.queue_ids() == [] and server.mailbox_files("alice@home.test") == []
    assert server.cli("quarantine", "delete", torn).stdout == f"deleted {torn}\n"


def test_release_delivers_to_a_local_inbox_and_to_a_forwarding_destination(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink()
    server = mailfleet_factory(primary_and_forwarder(sink.port))
    local, local_data = hold(server, ["alice@home.test"], "for-alice", SPAM)
    remote, remote_data = hold(server, ["bob@fwd.test", "carol@fwd.test"], "for-fwd", VIRUS)

    released = server.cli("quarantine", "release", local, remote)
    assert released.returncode == 0, released.stderr
    assert released.stdout == (f"released {local}: queued for 1 recipient(s)\n"
                               f"released {remote}: queued for 2 recipient(s)\n")
    assert server.cli("quarantine", "list").stdout == "quarantine is empty\n"

    # Into INBOX, not the Junk folder the check had chosen: as if the scan had passed.
    [delivered] = server.wait_for(lambda: server.mailbox_files("alice@home.test"), what="alice's message")
    assert delivered.read_bytes() == (b"Return-Path: <sender@outside.test>\r\nDelivered-To: alice@home.test\r\n"
                                      + local_data)
    assert server.mailbox_files("alice@home.test", "Junk") == []
    server.wait_for(lambda: sink.messages, what="the forwarded message")
    [arrived] = sink.messages
    assert (arrived.mail_from, arrived.rcpt_tos, arrived.data) == (
        "sender@outside.test", ("bob@fwd.test", "carol@fwd.test"), remote_data)
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")
    assert f"queue_id={remote} released from the quarantine by the administrator: rcpts=2" in server.log()


def test_release_with_the_server_stopped_is_delivered_when_it_starts(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink()
    server = mailfleet_factory(primary_and_forwarder(sink.port))
    server.stop()
    local, local_data = hold(server, ["alice@home.test"], "offline-local", SPAM)
    remote, remote_data = hold(server, ["bob@fwd.test"], "offline-remote", VIRUS)

    released = server.cli("quarantine", "release", local, remote, "0123456789ABCDEF")
    assert released.returncode == 1  # one of the three is unknown; the two others are released all the same
    assert released.stdout.splitlines() == [
        f"released {queue_id} into the queue for 1 recipient(s); no server is running: it is delivered when "
        "the server starts" for queue_id in (local, remote)]
    assert released.stderr == "mailfleet: no message 0123456789ABCDEF in the quarantine\n"
    assert sorted(server.queue_ids()) == sorted([local, remote])
    assert server.cli("quarantine", "list").stdout == "quarantine is empty\n"

    server.start()
    [delivered] = server.wait_for(lambda: server.mailbox_files("alice@home.test"), what="alice's message")
    assert delivered.read_bytes().endswith(local_data)
    server.wait_for(lambda: sink.messages, what="the forwarded message")
    assert [(m.rcpt_tos, m.data) for m in sink.messages] == [(("bob@fwd.test",), remote_data)]
