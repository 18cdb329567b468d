"""IMAP command handlers, one module per family of commands (as Dovecot's ``src/imap/cmd-*.c``).

Importing this package imports every command module, each of which registers its handlers and
their states in ``registry.REGISTRY``; the session dispatches through that table.
"""

from appliance.imap.commands import (  # noqa: F401  (imported for their registrations)
    append,
    connection,
    copy,
    enable,
    expunge,
    fetch,
    idle,
    list_status,
    login,
    mailboxes,
    noop,
    quota,
    search,
    select,
    sort,
    store,
)
from appliance.imap.commands.registry import REGISTRY, Spec, command

__all__ = ["REGISTRY", "Spec", "command"]
