"""ManageSieve responses (RFC 5804 §1.2, §1.3, §4): strings as the server writes them, and the response codes."""

from __future__ import annotations

from appliance.managesieve.parser import MAX_QUOTED

# RFC 5804 §1.3 response codes (those this server sends).
ACTIVE = "ACTIVE"
ALREADYEXISTS = "ALREADYEXISTS"
ENCRYPT_NEEDED = "ENCRYPT-NEEDED"
NONEXISTENT = "NONEXISTENT"
QUOTA_MAXSCRIPTS = "QUOTA/MAXSCRIPTS"
QUOTA_MAXSIZE = "QUOTA/MAXSIZE"
TRYLATER = "TRYLATER"


def string(text: str) -> bytes:
    """A string for the wire: quoted when RFC 5804 §4 allows it, else a literal ``{n}`` CRLF octets."""
    data = text.encode("utf-8")
    if len(data) <= MAX_QUOTED and not any(b in data for b in (0, 10, 13)):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def literal(text: str) -> bytes:
    """Always a literal (GETSCRIPT's script, RFC 5804 §2.9)."""
    data = text.encode("utf-8")
    return b"{%d}\r\n" % len(data) + data


def status(kind: str, text: str = "", code: str | None = None) -> bytes:
    """An OK, NO or BYE line: ``NO (NONEXISTENT) "There is no script by that name"``."""
    out = kind.encode("ascii")
    if code:
        out += b" (" + code.encode("utf-8") + b")"
    if text:
        out += b" " + string(text)
    return out + b"\r\n"
