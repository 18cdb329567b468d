"""8-bit to 7-bit conversion for peers without 8BITMIME (RFC 6152 §3), as Postfix does by default.

Only the transfer encoding of 8-bit leaf parts changes (quoted-printable for text, base64 otherwise); headers
and 7-bit parts pass through byte for byte as the email package re-emits them without refolding.
"""

from __future__ import annotations

import base64
import io
import quopri
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32

_POLICY = compat32.clone(linesep="\r\n", max_line_length=None)


class CannotDowngrade(Exception):
    """The message has 8-bit data that no transfer encoding can carry (8-bit headers)."""


def _header_section(data: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0:
            return data[:idx]
    return data


def _convert(part: Message) -> bool:
    """Re-encode 8-bit leaves under `part`; True when something changed."""
    if part.is_multipart() or part.get_content_type() == "message/rfc822":
        changed = False
        for sub in part.get_payload():
            assert isinstance(sub, Message)  # a multipart's payload is its parts
            if any(not str(v).isascii() for v in sub.values()):
                raise CannotDowngrade("8-bit header in an enclosed part")
            changed = _convert(sub) or changed
        if changed and part.get("Content-Transfer-Encoding", "").lower() in ("8bit", "binary"):
            part.replace_header("Content-Transfer-Encoding", "7bit")
        return changed
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or raw.isascii():  # decode=True gives the leaf's bytes, or None
        return False
    if part.get_content_maintype() == "text":
        # RFC 2045 §6.7: line breaks stay line breaks; only the octets are quoted.
        encoded = quopri.encodestring(raw.replace(b"\r\n", b"\n")).decode("ascii")
        cte = "quoted-printable"
    else:
        encoded = base64.encodebytes(raw).decode("ascii")
        cte = "base64"
    part.set_payload(encoded)
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", cte)
    else:
        part["Content-Transfer-Encoding"] = cte
    return True


def downgrade_to_7bit(data: bytes) -> bytes:
    """`data` with every 8-bit body part re-encoded to 7 bit; raises CannotDowngrade for 8-bit headers."""
    if not _header_section(data).isascii():
        raise CannotDowngrade("8-bit header")
    message = message_from_bytes(data, policy=_POLICY)
    if not _convert(message):
        return data
    if "MIME-Version" not in message:
        message["MIME-Version"] = "1.0"  # RFC 2045 §4: a Content-Transfer-Encoding needs it
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
    return out.getvalue()
