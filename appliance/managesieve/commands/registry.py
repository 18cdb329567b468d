"""The command registry: each command's handler and the states it is allowed in (RFC 5804 §2: the script
commands need an authenticated session; STARTTLS and AUTHENTICATE are refused after authentication)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.managesieve.parser import Command

if TYPE_CHECKING:
    from appliance.managesieve.session import Session

Handler = Callable[["Session", Command], Awaitable[None]]

ANY = "any"
NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class Spec:
    handler: Handler
    state: str

    def refusal(self, authenticated: bool) -> str | None:
        """Why the command is not allowed now, or None."""
        if self.state == AUTHENTICATED and not authenticated:
            return "Authenticate first"
        if self.state == NOT_AUTHENTICATED and authenticated:
            return "Already authenticated"
        return None


REGISTRY: dict[str, Spec] = {}


def command(name: str, state: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        REGISTRY[name] = Spec(handler, state)
        return handler

    return register
