"""IMAP4rev1 server (RFC 3501) on the mailbox store.

``parser`` turns bytes into typed commands (or a BAD reason), ``session`` is the RFC 3501 §3 state
machine, ``message`` / ``fetch`` / ``search`` / ``listing`` answer FETCH, SEARCH and LIST, and
``server.start_imap`` starts the listeners (143 with STARTTLS, 993 implicit TLS).
Extensions: IDLE, UIDPLUS, MOVE, NAMESPACE, ID, ENABLE, LITERAL+, SASL-IR, SPECIAL-USE, CHILDREN,
UNSELECT, CONDSTORE, QRESYNC, ESEARCH, LIST-EXTENDED, LIST-STATUS, STATUS=SIZE, QUOTA.
"""
