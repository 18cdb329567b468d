"""Local delivery carrying out Sieve actions on the real store: a failure half-way is retried without repeating
what was done (a redirect is not sent twice, a folder does not get a second copy)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from appliance.config.model import SieveConfig
from appliance.delivery.local import LocalDelivery
from appliance.delivery.sieve_actions import SieveActions
from appliance.message.model import QueuedMessage, Recipient
from appliance.sieve.engine import SieveEngine
from appliance.sieve.state import SieveState
from appliance.sieve.storage import ScriptStore
from appliance.store import MailStore

MESSAGE = b"From: alice@far.test\r\nTo: bob@home.test\r\nSubject: hi\r\nMessage-ID: <r1@far.test>\r\n\r\nhello\r\n"


class Outbox:
    """The spool as local delivery sees it (``submit``): the first message to ``fail_for`` fails."""

    def __init__(self, fail_for: str) -> None:
        self.sent: list[tuple[str, tuple[str, ...]]] = []
        self.fail_for = fail_for

    async def __call__(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> None:
        if self.fail_for in rcpts:
            self.fail_for = ""
            raise OSError("spool disk full")
        self.sent.append((mail_from, tuple(rcpts)))


def _delivery(tmp_path: Path, script: str, outbox: Outbox) -> tuple[LocalDelivery, MailStore]:
    store = MailStore(tmp_path / "mail")
    scripts = ScriptStore(tmp_path / "sieve")
    scripts.write("bob@home.test", "main", script)
    scripts.activate("bob@home.test", "main")
    engine = SieveEngine(SieveConfig(), scripts, SieveState(tmp_path / "sieve" / "state.sqlite"))
    srs = lambda sender, user, target: f"SRS0=x={sender}@home.test"  # noqa: E731 - as forwarding/srs.py gives it
    return LocalDelivery(store, "mx.home.test", sieve=SieveActions(engine, store, "mx.home.test", outbox, srs)), store


async def test_a_failure_half_way_is_retried_without_repeating_what_was_done(tmp_path: Path) -> None:
    outbox = Outbox(fail_for="second@far.test")
    local, store = _delivery(tmp_path, 'require ["fileinto", "copy"];\n'
                                       'fileinto :copy "INBOX"; redirect :copy "first@far.test";\n'
                                       'redirect "second@far.test";\n', outbox)
    message = QueuedMessage("Q1", "alice@far.test", [Recipient("bob@home.test")], time.time())
    first = await local(message, message.recipients, MESSAGE)
    assert first["bob@home.test"].code == 451  # the second redirect failed: the queue retries
    retry = await local(message, message.recipients, MESSAGE)
    assert retry["bob@home.test"].code == 250
    assert outbox.sent == [("SRS0=x=alice@far.test@home.test", ("first@far.test",)),
                           ("SRS0=x=alice@far.test@home.test", ("second@far.test",))]
    assert store.account("bob@home.test").status("INBOX").messages == 1


async def test_a_user_without_a_script_is_delivered_as_before(tmp_path: Path) -> None:
    local, store = _delivery(tmp_path, "discard;", Outbox(""))
    message = QueuedMessage("Q2", "alice@far.test", [Recipient("carol@home.test")], time.time())
    result = await local(message, message.recipients, MESSAGE)
    assert result["carol@home.test"].code == 250 and "uid 1" in result["carol@home.test"].text
    assert store.account("carol@home.test").status("INBOX").messages == 1


async def test_reject_of_a_forged_sender_is_discarded_not_backscattered(tmp_path: Path) -> None:
    outbox = Outbox("")
    local, store = _delivery(tmp_path, 'require "reject"; reject "go away";', outbox)
    forged = b"Authentication-Results: mx.home.test; spf=fail smtp.mailfrom=far.test; dmarc=fail\r\n" + MESSAGE
    message = QueuedMessage("Q3", "alice@far.test", [Recipient("bob@home.test")], time.time())
    result = await local(message, message.recipients, forged)
    assert result["bob@home.test"].code == 250 and "sender failed SPF/DMARC" in result["bob@home.test"].text
    assert outbox.sent == []
    assert store.account("bob@home.test").status("INBOX").messages == 0
    # Someone else's Authentication-Results (another authserv-id) does not count: the sender gets the DSN.
    other = b"Authentication-Results: mx.elsewhere.test; spf=fail\r\n" + MESSAGE
    message = QueuedMessage("Q4", "alice@far.test", [Recipient("bob@home.test")], time.time())
    await local(message, message.recipients, other)
    assert outbox.sent == [("", ("alice@far.test",))]


async def test_a_redirect_back_to_where_the_message_was_is_kept_as_a_loop(tmp_path: Path) -> None:
    outbox = Outbox("")
    local, store = _delivery(tmp_path, 'redirect "carol@home.test";', outbox)
    looped = b"Delivered-To: carol@home.test\r\n" + MESSAGE
    message = QueuedMessage("Q5", "alice@far.test", [Recipient("bob@home.test")], time.time())
    result = await local(message, message.recipients, looped)
    assert "refused (loop)" in result["bob@home.test"].text and outbox.sent == []
    assert store.account("bob@home.test").status("INBOX").messages == 1
