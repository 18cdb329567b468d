"""The transaction log: one line per recipient and delivery attempt, whoever delivered it."""

from __future__ import annotations

import logging

from appliance.delivery.client import RcptResult

log = logging.getLogger("appliance.queue")


def log_outcome(queue_id: str, address: str, route_key: str, attempt: int, status: str, result: RcptResult) -> None:
    """The one log line per recipient and attempt (attempt 0: stored in the mailbox before the 250)."""
    log.info("queue_id=%s rcpt=%s route=%s attempt=%d status=%s code=%d host=%s text=%r", queue_id, address,
             route_key, attempt, status, result.code, result.remote_host or "-", result.text[:200])
