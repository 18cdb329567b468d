"""The extensions side by side with Debian's Dovecot 2.3, which supports them too: the same corpus and
scripts as tests/imap/test_dovecot_parity.py, the same answers (after its masking)."""

from __future__ import annotations

from tests.imap import test_dovecot_parity as parity

_dovecot_installed = parity._dovecot_installed  # the fixtures, by name
pair = parity.pair
compare = parity.compare

MSG = "From: a@example.org\r\nSubject: appended\r\n\r\nbody\r\n"


def _lit(text: str) -> str:
    return f"{{{len(text.encode())}+}}\r\n{text}"


def test_binary_like_dovecot(pair) -> None:
    compare(pair, [
        "EXAMINE INBOX",
        "FETCH 2 (BINARY.PEEK[1.1] BINARY.SIZE[1.1])",
        "FETCH 2 (BINARY.PEEK[2] BINARY.SIZE[2])",
        "FETCH 2 BINARY.PEEK[2]<3.4>",
        "FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])",
        "FETCH 2 BINARY.SIZE[4]",
        "FETCH 1:4 BINARY.SIZE[]",
        "FETCH 2 (BINARY.PEEK[] BINARY.PEEK[1] BINARY.PEEK[3])",
    ])


def test_multiappend_like_dovecot(pair) -> None:
    """Refusals are not compared: Dovecot stops reading a MULTIAPPEND at the message it refuses and takes the
    rest (LITERAL+ literals) as commands; we read the whole command and refuse it whole (RFC 3502 §3)."""
    compare(pair, [
        f"APPEND Drafts (\\Draft) {_lit(MSG)} (\\Seen) \"01-Feb-2024 10:00:00 +0000\" {_lit(MSG)}",
        "STATUS Drafts (MESSAGES)",
        "EXAMINE Drafts",
        "FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)",
    ])
