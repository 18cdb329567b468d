"""Modified UTF-7 for mailbox names (RFC 3501 §5.1.3)."""

from __future__ import annotations

import base64
import binascii


class MUTF7Error(ValueError):
    """The name is not valid modified UTF-7."""


def encode(name: str) -> str:
    """Unicode mailbox name -> the ASCII form sent on the wire."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode(name: str) -> str:
    """Wire form -> Unicode; raises MUTF7Error on anything RFC 3501 §5.1.3 does not allow."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ord(ch) < 0x20 or ord(ch) > 0x7E:
            raise MUTF7Error("mailbox name has a non-ASCII character (send it in modified UTF-7)")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise MUTF7Error("unterminated '&' sequence in mailbox name")
        chunk = name[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        b64 = chunk.replace(",", "/")
        try:
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            text = raw.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise MUTF7Error("invalid modified UTF-7 in mailbox name") from None
        if encode(text) != "&" + chunk + "-":  # reject non-canonical encodings (and encoded ASCII)
            raise MUTF7Error("non-canonical modified UTF-7 in mailbox name")
        out.append(text)
    return "".join(out)
