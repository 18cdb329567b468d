"""rspamd's HTTP protocol: one ``POST /checkv2`` per message, over a bounded pool of connections.

The client (``RspamdScanner``) sends the message with the envelope in rspamd's request headers and hands the
JSON reply to a pure parser (``parse_reply``), which turns it into a Verdict or a one-line ScanError. rspamd
decides nothing here: its action, score, symbols, SMTP message and milter block are reported as they are, and
the policy decides.

Protocol: https://rspamd.com/doc/developers/protocol.html ("HTTP headers", "Rspamd HTTP reply", "Milter
headers"). Choices made against it:

- ``Pass: all`` is not sent. It does not skip checks, it forces them: rspamd then runs every rule even once
  the outcome is settled (the reject score reached, a pre-filter such as GTUBE or a rate limit deciding), which
  costs CPU for symbols nobody reads before the 250. The default lets rspamd stop early; the action, score and
  the symbols it did run are still in the reply.
- ``Hostname`` (the client's verified PTR name) is not sent: this host does not resolve it, and without the
  header rspamd looks the PTR up itself (once_received.lua, hfilter.lua).
- rspamd 3.4's normal worker answers every request with ``Connection: close``; the pool then only bounds the
  number of scans in flight. Against a peer that keeps connections alive (a later rspamd, a proxy) they are
  reused.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import httpx

from appliance.config.model import HostPort, ScannerConfig, UnixSocket
from appliance.filters.scanner import (
    Action,
    AddRecipient,
    Change,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    ScanError,
    ScanRequest,
    Verdict,
)

MAX_REPLY = 4 * 1024 * 1024  # bytes of JSON; a reply listing max_urls (10240) URLs stays far below it
MAX_ERROR_BODY = 4096  # bytes read of a non-200 reply, for the one line that names the error
POOL_SIZE = 32  # connections at most per scanner; more scans in flight wait for one

_ACTIONS = {
    "no action": Action.NONE,
    "add header": Action.ADD_HEADER,
    "rewrite subject": Action.REWRITE_SUBJECT,
    "greylist": Action.GREYLIST,
    "soft reject": Action.SOFT_REJECT,
    "reject": Action.REJECT,
    # Custom actions of rspamd >= 3.0 ("actions { discard { flags = [...] } }"): the message is held, never
    # silently dropped.
    "quarantine": Action.QUARANTINE,
    "discard": Action.QUARANTINE,
}
# The reply an action gets when rspamd's smtp_message is text only (or has a code of the wrong class).
_DEFAULT_CODES = {
    Action.REJECT: ("550", "5.7.1"),
    Action.SOFT_REJECT: ("451", "4.7.1"),
    Action.GREYLIST: ("451", "4.7.1"),
}
# A reply's code and enhanced code (RFC 5321 §4.2, RFC 3463 §2), as in "554 5.7.1 Sender blocked".
_REPLY = re.compile(r"^([245]\d\d)(?=[ -]|$)[ -]?(?:([245]\.\d{1,3}\.\d{1,3})(?=\s|$))?\s*")
_DEFAULT_TEXT = {"5": "Message refused by the spam filter", "4": "Try again later"}
_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 §3.6.8: ftext, printable ASCII but ":"
_SYMBOL_NAME = re.compile(r"^[\x21-\x7e]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # but TAB, LF, CR: header values keep their folds
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_REPLY_TEXT_MAX = 400  # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its code and CRLF


class RspamdScanner:
    """A client of one rspamd normal worker (or proxy), on TCP or a Unix socket."""

    def __init__(self, config: ScannerConfig, hostname: str, *, max_connections: int = POOL_SIZE) -> None:
        self.name = config.name or config.type
        self._where = f"rspamd {config.address}"
        self._settings_id = config.settings_id
        self._hostname = hostname
        # Scans beyond the pool wait here, in FIFO order, rather than in httpcore's queue, whose every change
        # walks all the waiting requests: with 300 scans waiting on 32 connections that cost 2.8 ms of CPU per
        # scan against 1.1 ms (tests/peers/rspamd.py, 2 shared cores).
        self._slots = asyncio.Semaphore(max_connections)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        base_url, uds = _endpoint(config.address)
        # trust_env=False: no HTTP(S)_PROXY or netrc from the environment between this host and its scanner.
        transport = httpx.AsyncHTTPTransport(uds=uds, limits=limits, trust_env=False, retries=0)
        # Each phase (connect, write, read, waiting for a pooled connection) is bounded by the scan's timeout;
        # the engine's asyncio.wait_for bounds the whole.
        # Accept-Encoding: identity, as rspamd compresses only when asked (its "Flags: zstd"), and a reply that
        # comes compressed anyway is refused rather than inflated (_read_body).
        self._client = httpx.AsyncClient(base_url=base_url, transport=transport, trust_env=False,
                                         timeout=httpx.Timeout(config.timeout),
                                         headers={"Accept-Encoding": "identity", "User-Agent": "mailfleet"})

    async def scan(self, request: ScanRequest) -> Verdict:
        fields = request_headers(request, self._settings_id, request.hostname or self._hostname)
        headers = [(name.encode("ascii"), value) for name, value in fields]
        try:
            async with self._slots, self._client.stream("POST", "/checkv2", content=request.data,
                                                        headers=headers) as response:
                if response.status_code != 200:
                    raise ScanError(f"{self._where}: {await _error_line(response)}")
                body = await _read_body(response, MAX_REPLY, self._where)
        except httpx.TimeoutException as exc:
            raise ScanError(f"{self._where}: timed out ({_describe(exc)})") from None
        except httpx.ConnectError as exc:
            raise ScanError(f"{self._where}: cannot connect: {_system_error(exc)}") from None
        except httpx.HTTPError as exc:
            raise ScanError(f"{self._where}: {_describe(exc)}") from None
        except OSError as exc:
            raise ScanError(f"{self._where}: {exc.strerror or _describe(exc)}") from None
        return decode_reply(body, self.name, self._where, header_names(request.data))

    async def close(self) -> None:
        await self._client.aclose()


def _endpoint(address: HostPort | UnixSocket) -> tuple[str, str | None]:
    """The base URL and, for a Unix socket, its path (the URL's host is then only the Host header)."""
    if isinstance(address, UnixSocket):
        return "http://localhost", str(address.path)
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"http://{host}:{address.port}", None


def request_headers(request: ScanRequest, settings_id: str | None, hostname: str) -> list[tuple[str, bytes]]:
    """rspamd's request headers for one message (protocol.html, "HTTP headers"): what the SMTP session knows.

    Values are UTF-8 (RFC 6531 addresses) without control characters, so that nothing a client said can end a
    header line; a value left empty is not sent.
    """
    client = request.client
    recipients = request.recipients or tuple(address for address, _ in request.transaction.accepted)
    fields: list[tuple[str, str | None]] = [
        ("Settings-ID", settings_id),
        ("Ip", client.ip),
        ("Helo", client.host_name),
        ("From", request.sender or "<>"),  # rspamd reads "<>" as the null reverse-path
        *(("Rcpt", recipient) for recipient in recipients),
        ("User", client.login),
        ("Queue-Id", request.queue_id),
        ("MTA-Name", hostname),
    ]
    headers = []
    for name, value in fields:
        clean = _header_value(value)
        if clean:
            headers.append((name, clean))
    return headers


def _header_value(value: str | None) -> bytes:
    if not value:
        return b""
    return re.sub(r"[\x00-\x1f\x7f]", "", value).strip().encode("utf-8", "replace")


async def _read_body(response: httpx.Response, limit: int, where: str) -> bytes:
    """The reply's body, at most ``limit`` bytes; longer, or compressed without being asked to, is an error.

    The raw stream is read, so nothing is decoded: a peer cannot make a small compressed body inflate past the
    limit in one chunk.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ScanError(f"{where}: reply compressed ({_clip(encoding, 40)}) without being asked to")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ScanError(f"{where}: reply of {int(declared)} bytes, more than the {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise ScanError(f"{where}: reply longer than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


async def _error_line(response: httpx.Response) -> str:
    """``HTTP 500 invalid command: <rspamd's error>``: the status and the ``error`` of rspamd's JSON, if any."""
    line = f"HTTP {response.status_code} {_clip(response.reason_phrase, 80)}".rstrip()
    try:
        body = await _read_body(response, MAX_ERROR_BODY, "")
        error = json.loads(body).get("error")
    except (ScanError, ValueError, RecursionError, AttributeError):
        return line
    except httpx.HTTPError as exc:
        return f"{line} ({_describe(exc)})"
    return f"{line}: {_clip(error, 200)}" if isinstance(error, str) and error.strip() else line


def _system_error(exc: BaseException) -> str:
    """The system's reason under a connection error ("Connection refused"), found in the chain of causes
    (httpx wraps httpcore's error, which wraps anyio's "All connection attempts failed" over each attempt's)."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return os.strerror(current.errno)
        pending.extend((current.__cause__, current.__context__, *getattr(current, "exceptions", ())))
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    return _clip(str(exc), 200) or type(exc).__name__


def _clip(text: str, limit: int) -> str:
    """One printable line of at most ``limit`` characters."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def header_names(data: bytes) -> list[str]:
    """The names of the message's header fields, in order (RFC 5322 §2.2: a field starts at a line not
    beginning with white space, its name ends at the colon), up to the empty line that ends the section."""
    names = []
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, _ = line.partition(b":")
        if colon:
            names.append(name.strip().decode("utf-8", "replace"))
    return names


def decode_reply(body: bytes, scanner: str, where: str, names: Sequence[str] = ()) -> Verdict:
    """The Verdict in rspamd's JSON reply ``body``; ScanError when it is not JSON or not a reply."""
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise ScanError(f"{where}: reply is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ScanError(f"{where}: reply is not JSON ({exc.msg} at byte {exc.pos})") from None
    except (ValueError, RecursionError) as exc:  # numbers too long for int(), arrays nested too deep
        raise ScanError(f"{where}: reply is not JSON ({type(exc).__name__})") from None
    return parse_reply(document, scanner, where, names)


def parse_reply(document: object, scanner: str, where: str, names: Sequence[str] = ()) -> Verdict:
    """rspamd's reply (protocol.html, "Rspamd HTTP reply") as a Verdict; ScanError when it is none.

    ``names`` are the message's header field names in order (``header_names``): the milter block's removals
    count fields by name ("the 2nd X-Spam", "all of them", "the last one"), and are given to the engine as
    ChangeHeader deletions of definite fields.
    """
    if not isinstance(document, dict):
        raise ScanError(f"{where}: reply is a JSON {_json_type(document)}, not an object")
    if "error" in document and "action" not in document:
        raise ScanError(f"{where}: rspamd says: {_clip(str(document['error']), 200)}")
    score = _number(document, "score", where)
    required = _number(document, "required_score", where)
    name = document.get("action")
    if not isinstance(name, str):
        raise ScanError(f"{where}: reply has no action")
    action = _ACTIONS.get(name)
    if action is None:
        raise ScanError(f"{where}: unknown action {_clip(name, 40)!r}")
    rules = _symbols(document.get("symbols", {}), where)
    text = _smtp_message(document.get("messages", {}), where)
    milter = document.get("milter", {})
    if not isinstance(milter, dict):
        raise ScanError(f"{where}: milter block is a JSON {_json_type(milter)}, not an object")
    headers = _added_headers(milter.get("add_headers", {}), where)
    changes = [*_removals(milter.get("remove_headers", {}), names, where), *_envelope_changes(milter, where)]
    if action is Action.REJECT and milter.get("reject") in ("discard", "quarantine"):
        action = Action.QUARANTINE  # milter_headers' custom rejection: held, never dropped
    if milter.get("no_action") is True and action is not Action.NONE:
        # "instead of doing any action ... just add header X-Rspamd-Action equal to that action"
        headers.append(("X-Rspamd-Action", name))
        action = Action.NONE
    subject = document.get("subject")
    if action is Action.REWRITE_SUBJECT and isinstance(subject, str) and subject.strip():
        subject = _clip(subject, 900)
    else:
        subject = None
    skipped = None
    if document.get("is_skipped") is True and action is Action.NONE:
        skipped = "rspamd skipped its checks (settings or a pre-filter)"
    return Verdict(scanner=scanner, score=score, required=required, rules=rules, action=action,
                   reply=_reply(action, text), subject=subject, headers=tuple(headers), changes=tuple(changes),
                   skipped=skipped, detail=text or "")


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "literal" if isinstance(value, bool) or value is None else "number"


def _number(document: Mapping[str, object], key: str, where: str) -> float:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScanError(f"{where}: reply has no numeric {key}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise ScanError(f"{where}: reply's {key} is not a finite number")
    return number


def _symbols(symbols: object, where: str) -> tuple[str, ...]:
    """The names of the symbols that matched, sorted; a name that is not printable ASCII is an error (it
    would end up in the X-Spam-Status header)."""
    if not isinstance(symbols, dict):
        raise ScanError(f"{where}: symbols are a JSON {_json_type(symbols)}, not an object")
    for name in symbols:
        if not _SYMBOL_NAME.match(name):
            raise ScanError(f"{where}: symbol name {_clip(name, 40)!r} is not printable ASCII")
    return tuple(sorted(symbols))


def _smtp_message(messages: object, where: str) -> str | None:
    """``messages.smtp_message``: the text rspamd means the MTA to answer with, on one line."""
    if not isinstance(messages, dict):
        raise ScanError(f"{where}: messages are a JSON {_json_type(messages)}, not an object")
    text = messages.get("smtp_message")
    if not isinstance(text, str):
        return None
    return _clip(text, _REPLY_TEXT_MAX) or None


def _reply(action: Action, text: str | None) -> str | None:
    """The SMTP reply for a refusing action: rspamd's own when it is one of the action's class (RFC 5321
    §4.2.1; an RFC 3463 enhanced code of that class is added when it has none), else its text behind the
    action's default code. A code of another class in the text (a 250 for a reject) is dropped, not obeyed."""
    default = _DEFAULT_CODES.get(action)
    if default is None or not text:
        return None
    code, enhanced = default
    text = text.encode("ascii", "replace").decode("ascii")
    match = _REPLY.match(text)
    if match is None:
        return f"{code} {enhanced} {text}"
    rest = text[match.end():] or _DEFAULT_TEXT[code[0]]
    if match.group(1)[0] != code[0]:
        return f"{code} {enhanced} {rest}"
    own_enhanced = match.group(2)
    if own_enhanced is None or own_enhanced[0] != code[0]:
        own_enhanced = enhanced
    return f"{match.group(1)} {own_enhanced} {rest}"


def _added_headers(add_headers: object, where: str) -> list[tuple[str, str]]:
    """``milter.add_headers``: name -> value, ``{"value", "order"}`` or a list of those (lua_mime.lua
    modify_headers). The fields are added in order of ``order``; where they go in the message is the engine's
    choice (with the other headers of the scan, at the top)."""
    if not isinstance(add_headers, dict):
        raise ScanError(f"{where}: add_headers is a JSON {_json_type(add_headers)}, not an object")
    found: list[tuple[float, int, str, str]] = []
    for name, spec in add_headers.items():
        _check_field_name(name, where)
        for value, order in _header_specs(name, spec, where):
            found.append((order, len(found), name, value))
    # rspamd's order -1 means "after the others" (milter_headers.lua default_headers_order).
    found.sort(key=lambda item: (math.inf if item[0] < 0 else item[0], item[1]))
    return [(name, value) for _, _, name, value in found]


def _header_specs(name: str, spec: object, where: str) -> Iterable[tuple[str, float]]:
    if isinstance(spec, str):
        yield _CONTROL.sub("", spec), -1
    elif isinstance(spec, dict):
        value, order = spec.get("value"), spec.get("order", -1)
        if not isinstance(value, str):
            raise ScanError(f"{where}: add_headers {name!r} has no text value")
        if isinstance(order, bool) or not isinstance(order, int | float) or not math.isfinite(order):
            order = -1
        yield _CONTROL.sub("", value), order
    elif isinstance(spec, list):
        for item in spec:
            if isinstance(item, list):
                raise ScanError(f"{where}: add_headers {name!r} nests lists")
            yield from _header_specs(name, item, where)
    else:
        raise ScanError(f"{where}: add_headers {name!r} is a JSON {_json_type(spec)}")


def _check_field_name(name: str, where: str) -> None:
    if not _FIELD_NAME.match(name) or len(name) > 128:
        raise ScanError(f"{where}: {_clip(name, 40)!r} is not a header field name")


def _removals(remove_headers: object, names: Sequence[str], where: str) -> list[Change]:
    """``milter.remove_headers``: name -> position or list of positions (1-based; 0: every field of that name;
    -N: the N-th from the end), resolved against the message's fields into ChangeHeader deletions. Each name's
    deletions come last field first, so that no deletion moves a field another one counts on."""
    if not isinstance(remove_headers, dict):
        raise ScanError(f"{where}: remove_headers is a JSON {_json_type(remove_headers)}, not an object")
    changes: list[Change] = []
    lowered = [name.lower() for name in names]
    for name, spec in remove_headers.items():
        _check_field_name(name, where)
        positions = spec if isinstance(spec, list) else [spec]
        count = lowered.count(name.lower())
        indexes: set[int] = set()
        for position in positions:
            if isinstance(position, bool) or not isinstance(position, int):
                raise ScanError(f"{where}: remove_headers {name!r} has a position that is not an integer")
            if position == 0:
                indexes.update(range(1, count + 1))
            elif 0 < position <= count:
                indexes.add(position)
            elif -count <= position < 0:
                indexes.add(count + position + 1)
        changes.extend(ChangeHeader(name, index, "") for index in sorted(indexes, reverse=True))
    return changes


def _envelope_changes(milter: Mapping[str, object], where: str) -> list[Change]:
    """``change_from``, ``add_rcpt``, ``del_rcpt`` (rspamd >= 1.8): envelope rewrites rules may ask for."""
    changes: list[Change] = []
    sender = milter.get("change_from")
    if sender is not None:
        changes.append(ChangeSender(_address(sender, "change_from", where)))
    for key, kind in (("add_rcpt", AddRecipient), ("del_rcpt", DeleteRecipient)):
        addresses = milter.get(key)
        if addresses is None:
            continue
        if not isinstance(addresses, list):
            raise ScanError(f"{where}: {key} is a JSON {_json_type(addresses)}, not an array")
        changes.extend(kind(_address(address, key, where)) for address in addresses)
    return changes


def _address(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.isprintable() or any(c.isspace() for c in value):
        raise ScanError(f"{where}: {key} is not an address")
    address = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if len(address) > 320 or "<" in address or ">" in address:
        raise ScanError(f"{where}: {key} is not an address")
    return address
