"""The second signal: replies that say "your sending address is blocked", counted per destination domain.

One destination that refuses us may have its own reasons (a strict local list, a misconfigured filter); several
different destinations refusing the same address within a short window is a listing. So an address counts as
blocked only when ``failover.rejection_threshold`` DIFFERENT destination domains gave such a reply within
``failover.rejection_window``; repeated refusals from one destination count once. The counts live in memory
(the queue process's): a restart forgets them, and the DNSBL rounds and the replies still to come suffice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class RejectionTable:
    """The configured regular expressions (case-insensitive), searched in "code enhanced text" of a reply."""

    def __init__(self, texts: Iterable[str]) -> None:
        patterns = list(texts)
        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None

    def blocked(self, reply: str) -> bool:
        return self._pattern is not None and self._pattern.search(reply) is not None


class RejectionCounts:
    """Per address: the last blocking reply of each destination within the window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: dict[str, dict[str, tuple[float, str]]] = {}

    def add(self, address: str, destination: str, reply: str, now: float) -> dict[str, str]:
        """Count a reply; the destinations (with their reply) that refused `address` within the window."""
        seen = self._seen.setdefault(address, {})
        seen[destination] = (now, reply)
        for old in [d for d, (at, _) in seen.items() if at < now - self.window]:
            del seen[old]
        return {d: text for d, (_, text) in seen.items()}

    def forget(self, address: str) -> None:
        """After a suspension: the address starts afresh when it comes back."""
        self._seen.pop(address, None)
