"""The acceptors' notices to the queue process, over a real Unix stream socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

from waits import wait_until_async

from appliance.message.model import QueuedMessage, Recipient, new_queue_id
from appliance.queue.spool import Spool
from appliance.service import messages as notify
from appliance.store import MailStore


class _Pool:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_reloaded(self, worker: int, ok: bool) -> None:
        self.events.append(("reloaded", worker, ok))

    def on_ready(self, worker: int) -> None:
        self.events.append(("ready", worker))


async def _exchange(path: Path) -> tuple[list[tuple], list[tuple[str, str]], list[tuple]]:
    committed: list[tuple] = []
    delivered: list[tuple[str, str]] = []
    pool = _Pool()
    server = await notify.listen(path, lambda queue_id, notice: committed.append((queue_id, notice)), pool,
                                 lambda address, folder: delivered.append((address, folder)))
    notifier = await notify.Notifier.connect(path)
    notifier.committed("18EB5102B1F8D1D8683B35")
    notifier.delivered("jörg@example.org")
    notifier.delivered("bob@example.org", "Junk")  # tagged spam: IMAP sessions idling on Junk hear of it
    notifier._send(b"X nonsense")  # a malformed line is logged and skipped, the stream goes on
    notifier._send(b"Q " + b"x" * 300)  # so is an ID line over the limit
    notifier.committed("18EB5102B1F8D1D8683B36", b'{"id":"18EB5102B1F8D1D8683B36"}', 57, 1024)
    notifier.committed("18EB5102B1F8D1D8683B37", b"{" + b" " * 20_000 + b"}", 57, 1024)  # too long: ID only
    notifier.reloaded(1, True)
    notifier.ready(1)
    await wait_until_async(lambda: len(pool.events) == 2, 5, "the READY and RELOADED notices")
    notifier.close()
    server.close()
    return committed, delivered, pool.events


def test_notices_arrive_in_order_and_a_bad_line_is_skipped(tmp_path: Path) -> None:
    committed, delivered, events = asyncio.run(_exchange(tmp_path / "notify.sock"))
    assert [(queue_id, notice is None) for queue_id, notice in committed] == [
        ("18EB5102B1F8D1D8683B35", True), ("18EB5102B1F8D1D8683B36", False), ("18EB5102B1F8D1D8683B37", True)]
    notice = committed[1][1]
    assert (notice.data_offset, notice.size, notice.envelope) == (57, 1024, b'{"id":"18EB5102B1F8D1D8683B36"}')
    assert delivered == [("jörg@example.org", "INBOX"), ("bob@example.org", "Junk")]
    assert events == [("reloaded", 1, True), ("ready", 1)]


def test_a_notice_gives_the_message_the_spool_file_holds(tmp_path: Path) -> None:
    """The queue process builds the message from the acceptor's notice instead of reading the file back:
    it must be the very message a read of the file gives."""
    spool = Spool(tmp_path / "spool")
    message = QueuedMessage(queue_id=new_queue_id(), mail_from="a@example.org", arrival=1700000000.5,
                            recipients=[Recipient("b@example.net", "B@example.net"), Recipient("c@example.net")],
                            client="192.0.2.1", helo="client.test", smtputf8=True,
                            meta={"crlf_only": True, "dot_free": True})
    envelope = spool.write(message, b"Subject: x\r\n\r\nbody\r\n")
    from_notice = spool.from_envelope(message.queue_id, envelope, message.data_offset, message.size)
    from_file = spool.load(message.queue_id)
    assert from_notice == from_file
    assert from_notice.read_data() == b"Subject: x\r\n\r\nbody\r\n"


def test_a_delivery_elsewhere_wakes_the_subscribers_of_an_open_mailbox(tmp_path: Path) -> None:
    here = MailStore(tmp_path / "mail")
    woken: list[str] = []
    here.subscribe("alice@example.org", woken.append)
    elsewhere = MailStore(tmp_path / "mail")  # stands for the acceptor process
    elsewhere.deliver("alice@example.org", b"Subject: hi\r\n\r\nx\r\n")
    assert woken == []  # another process's commit is not seen by itself...
    here.changed_elsewhere("alice@example.org", "INBOX")  # ...the acceptor's notice makes it so
    here.changed_elsewhere("nobody@example.org", "INBOX")  # no open mailbox: nothing to wake, nothing opened
    assert woken == ["INBOX"]
    assert here.account("alice@example.org").status("INBOX").messages == 1
    assert not (tmp_path / "mail" / "example.org" / "nobody").exists()
    here.close()
    elsewhere.close()
