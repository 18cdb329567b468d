"""RFC 3464 delivery status notifications (bounces and delay warnings) built with the email package."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import encoders, policy
from email.charset import QP, Charset
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from appliance.delivery.client import RcptResult

if TYPE_CHECKING:
    import jinja2

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")  # RFC 3464 §2.3.3

_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _field(text: str) -> str:
    """One header-safe line: a remote reply must never inject header lines into the report."""
    return " ".join(_CONTROL.sub(" ", text).split())


def _header_section(original: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = original.find(sep)
        if idx >= 0:
            return original[: idx + len(sep) // 2]
    return original


def _utf8_addr_xtext(address: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext: an internationalised address in an all-ASCII field."""
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address)


def _address_field(address: str) -> str:
    """RFC 3464 §2.3.2 address-type "rfc822"; RFC 6533 §3 "utf-8" for internationalised addresses."""
    address = _field(address)
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {_utf8_addr_xtext(address)}"


def _per_message(reporting_mta: str, arrival: datetime | None, queue_id: str) -> Message:
    block = Message()
    block["Reporting-MTA"] = f"dns; {_field(reporting_mta)}"
    if queue_id:
        block["X-Mailfleet-Queue-ID"] = _field(queue_id)
    if arrival is not None:
        block["Arrival-Date"] = format_datetime(arrival)
    return block


def _per_recipient(
    address: str, result: RcptResult, action: str, last_attempt: datetime | None, will_retry_until: datetime | None
) -> Message:
    block = Message()
    block["Final-Recipient"] = _address_field(address)
    block["Action"] = action
    block["Status"] = result.enhanced
    if result.remote_host:
        block["Remote-MTA"] = f"dns; {_field(result.remote_host.split('[', 1)[0])}"
        # RFC 3464 §2.3.6: the remote reply verbatim, as an "smtp" diagnostic.
        block["Diagnostic-Code"] = f"smtp; {result.code} {result.enhanced} {_field(result.text)}".rstrip()
    else:
        block["Diagnostic-Code"] = f"X-Mailfleet; {_field(result.text)}"
    if last_attempt is not None:
        block["Last-Attempt-Date"] = format_datetime(last_attempt)  # RFC 3464 §2.3.7
    if will_retry_until is not None and action == "delayed":
        block["Will-Retry-Until"] = format_datetime(will_retry_until)  # RFC 3464 §2.3.8
    return block


@dataclass(frozen=True)
class _HumanLine:
    address: str
    reply: str


@functools.cache
def _human_template() -> jinja2.Template:
    """The text part's template (templates/dsn.txt.j2), loaded once per process, at its first DSN.

    Jinja2 is imported here, not with the module: its import costs about 0.1 s and 10 MB of memory, and most
    processes that import this module (through the queue) never render a DSN.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("appliance.delivery", "templates"),
        autoescape=False,  # plain text, not HTML: escaping would garble "<bob@example.org>"
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    return env.get_template("dsn.txt.j2")


def _human_text(reporting_mta: str, recipients: Sequence[tuple[str, RcptResult]], action: str,
                damaged: bool, arrival: datetime | None) -> str:
    lines = [_HumanLine(_field(address), _field(str(result))) for address, result in recipients]
    return _human_template().render(reporting_mta=_field(reporting_mta), action=action, damaged=damaged,
                                    arrival=format_datetime(arrival) if arrival is not None else "",
                                    recipients=lines)


def build_dsn(
    reporting_mta: str,
    envelope_from: str,
    original: bytes | None,
    recipients: Sequence[tuple[str, RcptResult]],
    action: str = "failed",
    arrival: datetime | None = None,
    queue_id: str = "",
    last_attempt: datetime | None = None,
    will_retry_until: datetime | None = None,
) -> bytes:
    """A multipart/report DSN to `envelope_from`, sent by the caller with the null sender (RFC 5321 §6.1).

    ``original``: the message reported on, whose header section is returned (RFC 3462 §3: the third part);
    None when its bytes are lost (damaged in the queue): the text says so and the third part is left out.

    The null sender never gets a DSN (RFC 3464 §2 / RFC 5321 §6.1: no bounce loops): ValueError.
    """
    if not envelope_from:
        raise ValueError("no DSN for the null sender (RFC 5321 §6.1)")
    if action not in ACTIONS:
        raise ValueError(f"DSN action {action!r} is not one of {', '.join(ACTIONS)}")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")

    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = _field(envelope_from)
    report["Subject"] = (
        "Delayed Mail (still being retried)" if action == "delayed" else "Undelivered Mail Returned to Sender"
    )
    report["Date"] = format_datetime(datetime.now(UTC))
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5

    human = _human_text(reporting_mta, recipients, action, original is None, arrival)
    # The stubs say str, the email package takes a Charset too (here: UTF-8 with quoted-printable bodies).
    report.attach(MIMEText(human, "plain", "us-ascii" if human.isascii() else _UTF8_QP))  # type: ignore[arg-type]

    status = MIMEBase("message", "delivery-status")
    fields: list[Message | str] = [_per_message(reporting_mta, arrival, queue_id)]
    fields += [_per_recipient(a, r, action, last_attempt, will_retry_until) for a, r in recipients]
    status.set_payload(fields)
    report.attach(status)

    if original is not None:
        report.attach(_headers_part(original))
    # An internationalised sender can only be reached with SMTPUTF8, so its DSN may carry UTF-8 headers.
    return report.as_bytes(policy=policy.SMTP if envelope_from.isascii() else policy.SMTPUTF8)


def _headers_part(original: bytes) -> MIMEBase:
    headers = _header_section(original)
    part = MIMEBase("text", "rfc822-headers")
    if headers.isascii():
        part.set_payload(headers.decode("ascii"))
    else:
        # 8-bit headers (SMTPUTF8 mail): carried base64 so the DSN itself stays 7-bit.
        part.set_payload(headers)
        part.set_param("charset", "utf-8")
        encoders.encode_base64(part)
    return part
