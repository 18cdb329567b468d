"""Which scripts run for a recipient, and their outcome: the administrator's before, the user's active script,
the administrator's after (Pigeonhole's sieve_before / sieve_after order).

A user's script that does not parse, is too large, or fails while it runs leaves the message in INBOX alone
(RFC 5228 §2.10.6) and the reason goes to the log with the user, the script and the line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from appliance.config.loader import ConfigError
from appliance.config.model import SieveConfig
from appliance.sieve.checker import Script, parse
from appliance.sieve.grammar import SieveError
from appliance.sieve.interpreter import Environment, Outcome, run_sequence
from appliance.sieve.mail import MailView
from appliance.sieve.state import SieveState
from appliance.sieve.storage import ACTIVE, ScriptStore

log = logging.getLogger("appliance.sieve")


def load_global(path: Path | None, key: str) -> Script | None:
    """An administrator's script, or ConfigError naming the key, the file and the line (at start and in
    check-config: a broken global script is a broken configuration)."""
    if path is None:
        return None
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"{path}: {exc}") from None
    except SieveError as exc:
        raise ConfigError(key, f"{path}: {exc}") from None


def check_globals(settings: SieveConfig) -> None:
    """ConfigError when a global script does not parse (mailfleet check-config)."""
    load_global(settings.global_before, "sieve.global_before")
    load_global(settings.global_after, "sieve.global_after")


@lru_cache(maxsize=256)
def _parsed(text: str) -> Script:
    """Users' scripts parsed once per text (a delivery burst runs the same script many times)."""
    return parse(text)


@dataclass
class Evaluation:
    outcome: Outcome
    error: str | None  # set: the scripts failed, ``outcome`` is the implicit keep alone
    scripts: tuple[str, ...]  # the names that ran, for the log


class SieveEngine:
    def __init__(self, settings: SieveConfig, store: ScriptStore, state: SieveState) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.before = load_global(settings.global_before, "sieve.global_before")
        self.after = load_global(settings.global_after, "sieve.global_after")
        self._globals = self.before is not None or self.after is not None
        self._root = str(store.root)

    def applies(self, address: str) -> bool:
        """Whether anything runs for ``address``: one stat when there are no global scripts (a string path, not
        pathlib's objects: this runs for every local delivery; the layout is ScriptStore.folder's)."""
        if self._globals:
            return True
        local, _, domain = address.lower().rpartition("@")
        return os.path.exists(f"{self._root}/{domain}/{local}/{ACTIVE}")

    def evaluate(self, address: str, view: MailView, now: datetime,
                 mailbox_exists: Callable[[str], bool]) -> Evaluation:
        """The outcome of the scripts for ``address`` (blocking: file reads; call it off the event loop)."""
        scripts: list[tuple[str, Script]] = []
        if self.before is not None:
            scripts.append((f"global_before {self.settings.global_before}", self.before))
        user = self._user_script(address)
        if isinstance(user, str):
            return Evaluation(Outcome(), user, ())
        if user is not None:
            scripts.append(user)
        if self.after is not None:
            scripts.append((f"global_after {self.settings.global_after}", self.after))
        env = Environment(view, now, mailbox_exists, self.settings.max_redirects,
                          (self.settings.vacation_min_days, self.settings.vacation_max_days))
        names = tuple(name for name, _ in scripts)
        outcome = Outcome()
        for name, script in scripts:
            try:
                outcome = run_sequence([script], env, outcome)
            except SieveError as exc:
                return Evaluation(Outcome(), f"script {name!r} {exc}", names)
            if not outcome.implicit_keep:
                break
        return Evaluation(outcome, None, names)

    def _user_script(self, address: str) -> tuple[str, Script] | str | None:
        """(name, script), None without an active script, or the reason it cannot run."""
        try:
            found = self.store.active_script(address)
        except (OSError, UnicodeDecodeError) as exc:
            return f"active script unreadable: {exc}"
        if found is None:
            return None
        name, text = found
        if len(text.encode("utf-8")) > self.settings.max_script_size:
            return f"script {name!r} is larger than sieve.max_script_size ({self.settings.max_script_size})"
        try:
            return name, _parsed(text)
        except SieveError as exc:
            return f"script {name!r} {exc}"
