"""Rendering of FETCH responses (RFC 3501 §7.4.2) for one message."""

from __future__ import annotations

from datetime import datetime

from appliance.imap.binary import binary_section
from appliance.imap.message import Message, cached_envelope, cached_structure
from appliance.imap.parser import FetchAtt
from appliance.imap.response import literal, quote
from appliance.store import MessageInfo

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
BODY_ITEMS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"})


def imap_date_time(when: datetime) -> str:
    """INTERNALDATE form: "17-Jul-1996 02:44:25 -0700" (RFC 3501 §9 date-time)."""
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f'"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year:04d} '
            f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"')


SYSTEM_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def flag_list(flags: frozenset[str] | set[str], recent: bool) -> str:
    """Flags in Dovecot's order: system flags, \\Recent, then keywords."""
    items = [f for f in SYSTEM_ORDER if f in flags]
    if recent:
        items.append("\\Recent")
    items += sorted(f for f in flags if not f.startswith("\\"))
    return "(" + " ".join(items) + ")"


def needs_body(items: tuple[FetchAtt, ...]) -> bool:
    """True when the whole file must be read (ENVELOPE and BODYSTRUCTURE come from a cache)."""
    return any(item.name in BODY_ITEMS or (item.name == "BODY" and item.section is not None) for item in items)


def sets_seen(items: tuple[FetchAtt, ...]) -> bool:
    """Fetching a body section without .PEEK (or RFC822 / RFC822.TEXT) sets \\Seen (RFC 3501 §6.4.5)."""
    for item in items:
        if item.name in ("BODY", "BINARY") and item.section is not None and not item.peek:
            return True
        if item.name in ("RFC822", "RFC822.TEXT"):
            return True
    return False


def render(
    info: MessageInfo,
    items: tuple[FetchAtt, ...],
    recent: bool,
    message: Message | None,
    extra: dict[str, str] | None = None,
) -> list[str]:
    """The "name value" pairs of one FETCH response, in the order asked. ``extra`` holds the rendered values
    the command looked up in the store for this message (EMAILID, PREVIEW)."""
    out: list[str] = []
    for item in items:
        name = item.name
        if extra is not None and name in extra:
            out.append(f"{name} {extra[name]}")
        elif name == "THREADID":
            out.append("THREADID NIL")  # RFC 8474 §5.2: no thread ids (NIL is allowed)
        elif name == "FLAGS":
            out.append("FLAGS " + flag_list(info.flags, recent))
        elif name == "UID":
            out.append(f"UID {info.uid}")
        elif name == "MODSEQ":
            out.append(f"MODSEQ ({info.modseq})")
        elif name == "INTERNALDATE":
            out.append("INTERNALDATE " + imap_date_time(info.internal_date))
        elif name == "RFC822.SIZE":
            out.append(f"RFC822.SIZE {info.size}")
        elif name == "ENVELOPE":
            out.append("ENVELOPE " + cached_envelope(info.file))
        elif name == "BODYSTRUCTURE":
            out.append("BODYSTRUCTURE " + cached_structure(info.file, True))
        elif name == "BODY" and item.section is None:
            out.append("BODY " + cached_structure(info.file, False))
        elif message is None:
            continue
        elif name == "RFC822":
            out.append("RFC822 " + literal(message.data))
        elif name == "RFC822.HEADER":
            out.append("RFC822.HEADER " + literal(message.top.header))
        elif name == "RFC822.TEXT":
            out.append("RFC822.TEXT " + literal(message.top.body))
        elif name == "BODY" and item.section is not None:
            out.append(_section(name, item, message))
        elif name == "BINARY":
            out.append(_binary(item, message))
        elif name == "BINARY.SIZE":
            assert item.section is not None
            content = binary_section(message, item.section)
            out.append(f"BINARY.SIZE[{item.section.spec}] {len(content[0]) if content else 0}")
    return out


def _binary(item: FetchAtt, message: Message) -> str:
    """BINARY[part]<partial> (RFC 3516 §4.2): decoded content, as a literal8 when decoded (RFC 3516 §4.3
    asks for one when it holds NUL; Dovecot sends one for all decoded content, and so do we)."""
    assert item.section is not None
    data, decoded = binary_section(message, item.section) or (b"", False)
    key = f"BINARY[{item.section.spec}]"
    if item.partial is not None:
        start, length = item.partial
        key += f"<{start}>"
        data = data[start:start + length]
    return key + " " + ("~" if decoded or b"\x00" in data else "") + literal(data)


def _section(name: str, item: FetchAtt, message: Message) -> str:
    assert item.section is not None
    data = message.section(item.section)
    key = f"{name}[{_echo_spec(item.section.spec)}]"
    if item.partial is not None:
        start, length = item.partial
        key += f"<{start}>"
        if data is not None:
            data = data[start:start + length]
    return key + " " + literal(data or b"")  # an absent section is an empty literal, as Dovecot answers


def _echo_spec(spec: str) -> str:
    """Header field names are echoed upper-case, as Dovecot does; quoted when not atoms."""
    if "(" not in spec:
        return spec
    head, _, rest = spec.partition("(")
    names = rest.rstrip(")").split()
    echoed = [n.upper() if n.replace("-", "").isalnum() else quote(n) for n in names]
    return head + "(" + " ".join(echoed) + ")"
