"""Whether a vacation action answers (RFC 5230 §4.5, §4.6, RFC 3834) and the reply it sends.

The reply goes to the envelope sender with the null sender (RFC 5230 §4.3: no reply to a reply) and
``Auto-Submitted: auto-replied`` (RFC 3834 §5); lists, bulk mail, other automatic mail and mail that does not
name the user in its recipient fields get no reply.
"""

from __future__ import annotations

import email.utils
import re
from email.header import Header

from appliance.sieve.interpreter import Vacation
from appliance.sieve.mail import MailView

_SYSTEM_SENDERS = re.compile(r"^(mailer-daemon|postmaster|listserv|majordomo|owner-.*|.*-request|.*-owner|"
                             r"nobody|noreply|no-reply|bounce.*)$", re.IGNORECASE)
_RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


def refusal(action: Vacation, view: MailView, user: str) -> str | None:
    """Why this message gets no vacation reply (for the log), or None when it gets one."""
    sender = view.mail_from
    if not sender:
        return "null sender"
    if _SYSTEM_SENDERS.match(sender.rpartition("@")[0]):
        return f"system sender {sender}"
    auto = [v.strip().lower() for v in view.headers("auto-submitted")]
    if any(not v.startswith("no") for v in auto):
        return "Auto-Submitted message"
    if any(view.raw_headers(name) for name in ("list-id", "list-help", "list-unsubscribe", "list-post",
                                               "list-owner", "list-subscribe", "list-archive")):
        return "mailing-list message"
    if any(v.strip().lower() in ("bulk", "list", "junk") for v in view.headers("precedence")):
        return "Precedence bulk/list/junk"
    if view.raw_headers("x-auto-response-suppress") or view.raw_headers("x-autoreply"):
        return "automatic message"
    mine = {a.lower() for a in (user, view.rcpt, view.original_rcpt, *action.addresses) if a}
    if action.from_address:
        mine.add(email.utils.parseaddr(action.from_address)[1].lower())
    if sender.lower() in mine:
        return "sender is the user"
    named = {a.lower() for field in _RECIPIENT_FIELDS for a in view.addresses(field)}
    if not named & mine:
        return "user not named in To/Cc/Bcc (RFC 5230 §4.5)"
    return None


def build_reply(action: Vacation, view: MailView, user: str, hostname: str) -> bytes:
    """The reply message (RFC 5230 §5), CRLF line ends."""
    original_subject = (view.headers("subject") or [""])[0]
    subject = action.subject if action.subject is not None else f"Auto: {original_subject}".rstrip()
    subject = _one_line(subject)
    headers = [
        ("From", _one_line(action.from_address or user)),
        ("To", view.mail_from),
        ("Subject", str(Header(subject, "utf-8").encode()) if not subject.isascii() else subject),
        ("Date", email.utils.formatdate(localtime=False, usegmt=True)),
        ("Message-ID", email.utils.make_msgid(domain=hostname)),
        ("Auto-Submitted", "auto-replied (vacation)"),
        ("Precedence", "bulk"),
        ("X-Auto-Response-Suppress", "All"),  # Exchange clients: no auto-reply to this auto-reply
    ]
    message_id = (view.raw_headers("message-id") or [""])[0].strip()
    if message_id:
        references = " ".join(r.strip() for r in view.raw_headers("references"))
        headers.append(("In-Reply-To", message_id))
        headers.append(("References", f"{references} {message_id}".strip()))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    reason = action.reason.replace("\r\n", "\n").replace("\n", "\r\n")
    if action.mime:  # RFC 5230 §4.8: the reason is a MIME entity, its own headers first
        return (head + "MIME-Version: 1.0\r\n" + reason).encode("utf-8")
    return (head + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" + reason + ("" if reason.endswith("\r\n") else "\r\n")
            ).encode("utf-8")


def _one_line(value: str) -> str:
    """A header value from a script or a message on one line: a CR or LF would start a header of its own."""
    return " ".join(value.split("\r\n")).replace("\r", " ").replace("\n", " ").strip()
