"""The composition root in the queue process: what it does with what the rescan finds in the spool."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.config import parse_config
from appliance.message.model import QueuedMessage, Recipient, new_queue_id
from appliance.service.root import Appliance, Mode


def _queue_process(tmp_path: Path) -> Appliance:
    config = parse_config(f"hostname: gw.example.net\ndata_dir: {tmp_path}\nroles: [outgoing_gateway]\n"
                          "outgoing_gateway: {relay_networks: [127.0.0.0/8]}\n", check_host=False)
    return Appliance(config, Mode.QUEUE)


def _damaged(app: Appliance, envelope_readable: bool = True) -> str:
    """A message committed and then damaged on disk: its data cut short, its envelope still readable or not."""
    message = QueuedMessage(queue_id=new_queue_id(), mail_from="sender@example.org",
                            recipients=[Recipient("friend@remote.example")], arrival=1.0e9)
    app.spool.write(message, b"Subject: hi\r\n\r\n" + b"x" * 1000 + b"\r\n")
    path = app.spool.msg_dir / message.queue_id
    if envelope_readable:
        os.truncate(path, path.stat().st_size - 500)
    else:
        data = bytearray(path.read_bytes())
        data[data.index(b"{"):data.index(b"{") + 8] = b"#garbage"
        path.write_bytes(bytes(data))
    return message.queue_id


async def test_a_file_the_rescan_finds_damaged_is_set_aside_and_its_sender_told_once(tmp_path: Path) -> None:
    app = _queue_process(tmp_path)
    queue_id = _damaged(app)
    app.on_committed(queue_id)  # what the rescan does for a file no notice announced
    assert not (app.spool.msg_dir / queue_id).exists()
    assert (app.spool.corrupt_dir / queue_id).exists()
    [bounce_id] = app.spool.ids()
    bounce = app.spool.load(bounce_id)
    assert [r.address for r in bounce.recipients] == ["sender@example.org"]
    assert b"friend@remote.example" in bounce.read_data()
    app.on_committed(queue_id)  # the next rescan: nothing left to find, nothing told twice
    assert app.spool.ids() == [bounce_id]
    app.spool.close()


async def test_a_damaged_file_without_a_readable_envelope_is_set_aside_under_its_own_name(tmp_path: Path) -> None:
    app = _queue_process(tmp_path)
    queue_id = _damaged(app, envelope_readable=False)
    app.on_committed(queue_id)
    assert sorted(os.listdir(app.spool.corrupt_dir)) == [queue_id]
    assert app.spool.msg_dir.is_dir() and app.spool.ids() == []  # no sender to tell; the spool itself intact
    app.spool.close()
