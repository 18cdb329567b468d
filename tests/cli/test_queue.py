"""`mailfleet queue list|show|flush|delete|bounce`, with the server running and without it.

list and show read the spool files; flush, delete and bounce ask a running server and, with none running,
delete and bounce act on the files themselves. What is checked is what an administrator sees: the exit code,
the line printed, and what is (no longer) in the spool or the mailbox afterwards.
"""

from __future__ import annotations

import json

from peers.named import free_port
from peers.smtp_client import send

from .command import assert_one_line_error, mailfleet


def primary_and_gateway(sink_port: int, retry: str = "1h") -> dict:
    """alice@home.test is local (bounces land in her INBOX); mail for fwd.test waits for a peer on sink_port."""
    return {
        "roles": ["primary", "incoming_gateway"],
        "queue": {"retry_schedule": [retry]},
        "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
        "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{sink_port}"], "verify": "none"}}},
    }


def queued(mailfleet_factory, subjects: list[str]):
    """A server whose spool holds one message per subject, each deferred once (its peer is down)."""
    port = free_port(["127.0.0.1"])
    server = mailfleet_factory(primary_and_gateway(port))
    ids = [send(server.smtp_port, "alice@home.test", [f"{subject}@fwd.test"], subject) for subject in subjects]
    server.wait_for_log("attempt=1", count=len(subjects))
    return server, port, ids


def test_queue_commands_on_the_live_spool(mailfleet_factory, smtp_sink) -> None:
    server, port, (first, second, third) = queued(mailfleet_factory, ["first", "second", "third"])

    listing = server.cli("queue", "list")
    assert listing.returncode == 0
    for queue_id in (first, second, third):
        assert queue_id in listing.stdout
    assert "pending after 1 attempt(s)" in listing.stdout

    shown = server.cli("queue", "show", first)
    assert shown.returncode == 0 and "Subject: first" in shown.stdout and "first@fwd.test" in shown.stdout
    missing = server.cli("queue", "show", "NOPE")
    assert missing.returncode == 1 and "no message NOPE" in missing.stderr

    sink = smtp_sink(port=port)
    flushed = server.cli("queue", "flush", first)  # the next attempt is an hour away: flush brings it forward
    assert flushed.returncode == 0, flushed.stderr
    server.wait_for(lambda: len(sink.messages) == 1, what="the flushed message")
    assert sink.messages[0].rcpt_tos == ("first@fwd.test",)

    deleted = server.cli("queue", "delete", second)
    assert deleted.returncode == 0, deleted.stderr
    assert second not in server.queue_ids()

    bounced = server.cli("queue", "bounce", third)
    assert bounced.returncode == 0, bounced.stderr
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, what="the administrator's bounce")
    assert b"returned to sender by the administrator" in server.mailbox_files("alice@home.test")[0].read_bytes()
    # With the spool empty no delivery can start, and the sink records a message before it answers: one that
    # went out would be counted already.
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")
    assert len(sink.messages) == 1  # the deleted and the bounced message never went out


def test_flush_without_an_id_tries_every_message_now(mailfleet_factory, smtp_sink) -> None:
    server, port, ids = queued(mailfleet_factory, ["one", "two"])
    sink = smtp_sink(port=port)
    flushed = server.cli("queue", "flush")
    assert (flushed.returncode, flushed.stdout) == (0, "flushed 2 message(s)\n"), flushed.stderr
    server.wait_for(lambda: len(sink.messages) == 2, what="both flushed messages")
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")
    assert sorted(m.rcpt_tos for m in sink.messages) == [("one@fwd.test",), ("two@fwd.test",)]
    assert mailfleet("queue", "list", config=server.config_path).stdout == "queue is empty\n"


def test_unknown_ids_on_a_running_server_are_one_line_and_exit_1(mailfleet_factory) -> None:
    server, _, [kept] = queued(mailfleet_factory, ["kept"])
    for action in ("show", "flush", "delete", "bounce"):
        assert_one_line_error(server.cli("queue", action, "NOPE"), 1, "no message NOPE in the queue")
    assert server.queue_ids() == [kept]


def test_list_and_show_read_the_spool_when_no_server_runs(mailfleet_factory) -> None:
    server, _, [first, second] = queued(mailfleet_factory, ["first", "second"])
    assert server.stop() == 0

    listing = server.cli("queue", "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[-1] == "-- 2 message(s)"
    for queue_id in (first, second):
        [line] = [line for line in lines if line.startswith(f"{queue_id} ")]
        assert line.endswith("<alice@home.test>")
    assert sum("pending after 1 attempt(s) next in " in line for line in lines) == 2

    rows = json.loads(server.cli("queue", "list", "--json").stdout)
    assert sorted(row["id"] for row in rows) == sorted([first, second])
    for row in rows:
        assert row["from"] == "alice@home.test" and row["pending"] == 1
        [rcpt] = row["recipients"]
        assert rcpt["status"] == "pending" and rcpt["attempts"] == 1 and rcpt["next_attempt"] > row["arrival"]

    shown = server.cli("queue", "show", first)
    assert shown.returncode == 0, shown.stderr
    assert f"Queue-ID: {first}\n" in shown.stdout and "Sender: <alice@home.test>\n" in shown.stdout
    assert "Recipient: first@fwd.test (given as first@fwd.test) pending, 1 attempt(s)" in shown.stdout
    assert "Subject: first\n" in shown.stdout and "Message-ID: <first@client.test>\n" in shown.stdout


def test_flush_without_a_server_says_so_and_changes_nothing(mailfleet_factory) -> None:
    server, _, ids = queued(mailfleet_factory, ["waiting"])
    assert server.stop() == 0
    assert_one_line_error(server.cli("queue", "flush"), 1, "no server is running; queued mail is tried when it starts")
    assert server.queue_ids() == ids


def test_delete_and_bounce_act_on_the_files_when_no_server_runs(mailfleet_factory) -> None:
    server, _, [doomed, returned] = queued(mailfleet_factory, ["doomed", "returned"])
    assert server.stop() == 0

    deleted = server.cli("queue", "delete", doomed)
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted {doomed}\n"), deleted.stderr
    assert server.queue_ids() == [returned]
    assert_one_line_error(server.cli("queue", "delete", doomed), 1, f"no message {doomed} in the queue")

    bounced = server.cli("queue", "bounce", returned)
    assert bounced.returncode == 0, bounced.stderr
    assert bounced.stdout == f"{returned}: marked failed; the bounce is sent when the server starts\n"
    [row] = json.loads(server.cli("queue", "list", "--json").stdout)
    assert row["id"] == returned and row["recipients"][0]["status"] == "failed"
    assert_one_line_error(server.cli("queue", "bounce", "NOPE"), 1, "no message NOPE in the queue")

    server.start()  # the bounce goes out at the start, and the message leaves the queue
    server.wait_for(lambda: len(server.mailbox_files("alice@home.test")) == 1, what="the bounce after the start")
    raw = server.mailbox_files("alice@home.test")[0].read_bytes()
    assert b"Final-Recipient: rfc822; returned@fwd.test" in raw and b"Subject: returned" in raw
    server.wait_for(lambda: not server.queue_ids(), what="the queue to empty")


def test_show_of_a_damaged_spool_file_is_one_line(mailfleet_factory) -> None:
    server, _, [damaged] = queued(mailfleet_factory, ["damaged"])
    assert server.stop() == 0
    path = server.data_dir / "spool" / "msg" / damaged
    path.write_bytes(path.read_bytes()[:20])  # cut short: what a bad disk leaves
    result = server.cli("queue", "show", damaged)
    assert_one_line_error(result, 1, damaged)
