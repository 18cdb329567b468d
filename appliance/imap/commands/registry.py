"""The command registry: each IMAP command's handler and the states it is allowed in.

As Dovecot's ``command_register``: a command module registers its handlers with ``@command``,
naming the commands and their states (``state.ANY_STATE``, ``NOT_AUTHENTICATED``,
``AUTHENTICATED``, ``SELECTED``); the session looks a parsed command up here and answers BAD
when the connection's state does not allow it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

from appliance.imap.parser import Command
from appliance.imap.state import State

if TYPE_CHECKING:
    from appliance.imap.session import Session

C = TypeVar("C", bound=Command)
Handler = Callable[["Session", C], Awaitable[None]]


@dataclass(frozen=True)
class Spec:
    """One registered command: its handler and the states that allow it."""

    name: str
    handler: Handler[Command]
    states: frozenset[State]

    def refusal(self, state: State) -> str | None:
        """The BAD reason when ``state`` does not allow this command, else None."""
        if state in self.states:
            return None
        if state is State.NOT_AUTHENTICATED:
            return "Please authenticate first"
        if State.NOT_AUTHENTICATED in self.states:
            return "Already authenticated"
        return "No mailbox selected"


REGISTRY: dict[str, Spec] = {}


def command(*names: str, states: frozenset[State]) -> Callable[[Handler[C]], Handler[C]]:
    """Register the decorated handler for ``names`` (upper case), allowed in ``states``."""

    def register(handler: Handler[C]) -> Handler[C]:
        for name in names:
            if name in REGISTRY:
                raise ValueError(f"IMAP command {name} is registered twice")
            # the parser builds the Command subclass that belongs to the name, which the handler takes
            REGISTRY[name] = Spec(name, cast(Handler[Command], handler), states)
        return handler

    return register
