"""PREVIEW (RFC 8970): a short plain-text preview of a message, for message lists.

The text comes from the first text/plain part that is not an attachment, or failing that the first
text/html part with its markup removed; its transfer encoding and charset are decoded, quoted lines
("> ...", replies' citations) are left out, whitespace is collapsed, and the result is cut at
``MAX_CHARS`` characters (RFC 8970 §3: at most 256). A message without text has the empty preview.
Computed once per message and cached in the store (``Account.store_previews``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

from appliance.imap.binary import UnknownCTE, decode
from appliance.imap.message import Message, Part

MAX_CHARS = 256
_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)
_SPACE = re.compile(r"\s+")


def preview_text(data: bytes) -> str:
    """The preview of the message ``data`` (never raises on a malformed message: mail is hostile)."""
    root = Message(data).root
    plain = next(_leaves(root, "plain"), None)
    part = plain if plain is not None else next(_leaves(root, "html"), None)
    if part is None:
        return ""
    try:
        text = _charset_decode(part, decode(part))
    except (UnknownCTE, ValueError):
        return ""
    if part.subtype == "html":
        text = html.unescape(_TAG.sub(" ", text))
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(">")]
    return _SPACE.sub(" ", " ".join(lines)).strip()[:MAX_CHARS]


def _leaves(part: Part, subtype: str) -> Iterator[Part]:
    """text/<subtype> leaves in MIME order, attachments and encapsulated messages left out."""
    if part.children:
        for child in part.children:
            yield from _leaves(child, subtype)
        return
    disposition = (part.get("content-disposition") or b"").split(b";")[0].strip().lower()
    if part.ctype == "text" and part.subtype == subtype and disposition != b"attachment":
        yield part


def _charset_decode(part: Part, data: bytes) -> str:
    charset = next((v for k, v in part.params if k.lower() == "charset"), "us-ascii").strip().lower()
    if charset in ("us-ascii", "ascii"):
        charset = "utf-8"  # 8-bit text labelled us-ascii is usually UTF-8; ASCII decodes the same
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")
