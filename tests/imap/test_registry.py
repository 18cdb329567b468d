"""The IMAP command registry: every command the parser accepts has a handler, in the states RFC 3501 §6 gives."""

from __future__ import annotations

from appliance.imap import parser
from appliance.imap.commands import REGISTRY
from appliance.imap.state import State

ANY = {State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED}


def test_every_command_the_parser_accepts_is_registered() -> None:
    accepted = set(parser.SIMPLE) | set(parser._HANDLERS)
    assert accepted - REGISTRY.keys() == set()


def test_commands_are_allowed_in_the_states_rfc_3501_gives_them() -> None:
    # §6.1 any state, §6.2 not authenticated, §6.3 authenticated (and selected), §6.4 selected only.
    expected = {
        "CAPABILITY": ANY, "NOOP": ANY, "LOGOUT": ANY,
        "STARTTLS": {State.NOT_AUTHENTICATED}, "LOGIN": {State.NOT_AUTHENTICATED},
        "AUTHENTICATE": {State.NOT_AUTHENTICATED},
        "SELECT": {State.AUTHENTICATED, State.SELECTED}, "EXAMINE": {State.AUTHENTICATED, State.SELECTED},
        "CREATE": {State.AUTHENTICATED, State.SELECTED}, "DELETE": {State.AUTHENTICATED, State.SELECTED},
        "RENAME": {State.AUTHENTICATED, State.SELECTED}, "SUBSCRIBE": {State.AUTHENTICATED, State.SELECTED},
        "LIST": {State.AUTHENTICATED, State.SELECTED}, "STATUS": {State.AUTHENTICATED, State.SELECTED},
        "APPEND": {State.AUTHENTICATED, State.SELECTED},
        "CHECK": {State.SELECTED}, "CLOSE": {State.SELECTED}, "EXPUNGE": {State.SELECTED},
        "SEARCH": {State.SELECTED}, "FETCH": {State.SELECTED}, "STORE": {State.SELECTED},
        "COPY": {State.SELECTED},
    }
    wrong = {name: sorted(s.value for s in REGISTRY[name].states) for name, states in expected.items()
             if name in REGISTRY and set(REGISTRY[name].states) != states}
    assert wrong == {}
    assert expected.keys() - REGISTRY.keys() == set()


def test_a_refused_state_is_named_as_a_client_would_understand_it() -> None:
    assert REGISTRY["FETCH"].refusal(State.NOT_AUTHENTICATED) == "Please authenticate first"
    assert REGISTRY["FETCH"].refusal(State.AUTHENTICATED) == "No mailbox selected"
    assert REGISTRY["LOGIN"].refusal(State.AUTHENTICATED) == "Already authenticated"
    assert REGISTRY["FETCH"].refusal(State.SELECTED) is None
