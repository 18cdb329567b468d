"""IMAP4rev1 server (RFC 3501) on the mailbox store.

``parser`` turns bytes into typed commands (or a BAD reason); ``wire`` frames a connection (command
lines with literals in, buffered responses out); ``session`` is the RFC 3501 §3 state machine
(``state``) that dispatches through the registry in ``commands``, one module per family of
commands, each naming the states it is allowed in; ``view`` is the selected mailbox as the client
knows it and its sync; ``message`` / ``fetch`` / ``search`` / ``listing`` answer FETCH, SEARCH and
LIST; ``server.start_imap`` starts the listeners (143 with STARTTLS, 993 implicit TLS).
Extensions: IDLE, UIDPLUS, MOVE, NAMESPACE, ID, ENABLE, LITERAL+, SASL-IR, SPECIAL-USE, CHILDREN,
UNSELECT, CONDSTORE, QRESYNC, ESEARCH, LIST-EXTENDED, LIST-STATUS, STATUS=SIZE, QUOTA.
"""
