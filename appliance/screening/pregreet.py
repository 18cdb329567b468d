"""The pregreet test of one connection, as Postfix's postscreen runs it (postscreen(8), "Pregreet test").

The SMTP engine sends the first line of a multi-line greeting, ``220-host ...``, waits ``wait`` seconds and
then sends the final ``220 host ...`` line. RFC 5321 §4.2.1 and §4.3.1 make a client wait for the last line of
a reply before it speaks; spambots that talk first (to save time, or blindly) show themselves.

A client that talked has already been sent ``220-``, and RFC 5321 §4.2.1 wants every line of a multi-line reply
to carry the same code, so the refusal cannot replace the greeting. The engine finishes the greeting with the
``220`` line and then answers every command but QUIT with 554 5.7.1 (postscreen's ``enforce`` action, rather
than ``drop``, which answers 521 after the ``220-`` line against §4.2.1). The client hears a permanent refusal
to MAIL and RCPT: nothing is accepted from it, and a legitimate but broken client bounces the message with a
reason instead of retrying blindly; after 20 refused commands (postscreen_command_count_limit) the engine
answers 421 and hangs up. The failure is logged with what the client sent, and forgets any earlier
pass, so the client is tested again on its next connection; a pass is cached for ``ttl``.
"""

from __future__ import annotations

import logging

from appliance.pipeline.stages import Client
from appliance.pipeline.verdicts import DNSWL
from appliance.screening.cache import ScreeningCache

log = logging.getLogger("appliance.screening")

SHOWN = 60  # bytes of what a client sent too early that go into the log line


class PregreetTest:
    """The test the engine runs at the greeting (smtp/protocol.py); the verdict PREGREET carries it."""

    __slots__ = ("wait", "_ip", "_client", "_cache")

    def __init__(self, ip: str, client: Client, wait: float, cache: ScreeningCache) -> None:
        self.wait = wait
        self._ip = ip
        self._client = client
        self._cache = cache

    def skipped(self) -> bool:
        """True once a DNSWL listing arrived during the wait: allow-listed clients skip the test (as
        postscreen_dnsbl_allowlist_threshold does), and need not wait for its end."""
        return bool(self._client.verdicts.get(DNSWL))

    def done(self, early: bytes) -> str | None:
        """The wait is over; ``early`` is what the client sent before the final 220 line. The refusal that
        answers every later command but QUIT, or None when the client passed (or skipped the test)."""
        if self.skipped():
            return None
        if not early:
            self._cache.pregreet_record(self._ip, passed=True)
            log.info("client=%s pregreet test passed", self._ip)
            return None
        self._cache.pregreet_record(self._ip, passed=False)
        # repr(): what a bot sends goes into the log escaped, never as raw CR, LF or escape sequences.
        log.warning("client=%s PREGREET %d bytes before the greeting ended: %r; refused for this session",
                    self._ip, len(early), early[:SHOWN])
        return f"554 5.7.1 Service unavailable; client [{self._ip}] talked before the greeting ended"
