#!/usr/bin/env python3
"""Send and read back real mail from inside the scenario containers (stdlib only: the targets have no PyPI).

  mailprobe send --host H [--port 25] --sender A --to B [--to C] --subject S [--starttls] [--auth USER PASS]
                 [--payload eicar|gtube] [--header "Name: value"] [--expect refused]
  mailprobe maildir --root DIR --subject S [--timeout 60] [--absent]
  mailprobe imap --host H --user U --password P --subject S [--folder INBOX] [--timeout 30] [--absent]
  mailprobe pop3 --host H --user U --password P --subject S [--timeout 30]
  mailprobe sinkdir --root DIR --subject S [--timeout 60]
  mailprobe tls-name --host H [--port 25]

Prints one line (the server's final reply, or the file found); exit 0 when the expectation holds.
"""

from __future__ import annotations

import argparse
import email
import email.utils
import imaplib
import poplib
import smtplib
import ssl
import sys
import time
from pathlib import Path


def _tls() -> ssl.SSLContext:
    # The fleet's certificates are self-signed in the scenarios; the test checks the protocol, not the PKI.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# The industry's test patterns, assembled here so that this file itself matches no scanner: EICAR's test file
# (eicar.org) for antivirus, GTUBE (SpamAssassin's "Generic Test for Unsolicited Bulk Email") for spam filters.
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _message(a: argparse.Namespace) -> str:
    """The test message: a plain text, GTUBE in the text, or EICAR as a base64 attachment (as malware comes,
    so the scanner has to decode the MIME part to find it)."""
    head = (f"From: <{a.sender}>\r\nTo: {', '.join(f'<{t}>' for t in a.to)}\r\nSubject: {a.subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{a.subject}@mailprobe.test>\r\n"
            + "".join(f"{field}\r\n" for field in a.header))
    text = f"mailprobe test message {a.subject}\r\n"
    if a.payload == "gtube":
        return f"{head}\r\n{text}\r\n{GTUBE}\r\n"
    if a.payload == "eicar":
        import base64

        boundary = f"mailprobe-{a.subject}"
        return (f"{head}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
                f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n{text}"
                f"--{boundary}\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\n"
                f"Content-Disposition: attachment; filename=\"eicar.com\"\r\nContent-Transfer-Encoding: base64\r\n"
                f"\r\n{base64.b64encode(EICAR.encode()).decode()}\r\n--{boundary}--\r\n")
    return f"{head}\r\n{text}"


def send(a: argparse.Namespace) -> int:
    body = _message(a)
    try:
        with smtplib.SMTP(a.host, a.port, local_hostname="probe.test", timeout=30) as smtp:
            code, msg = smtp.ehlo()
            if code != 250:
                return _verdict(a, code, msg, "EHLO")
            if a.starttls:
                smtp.starttls(context=_tls())
                smtp.ehlo()
            if a.auth:
                smtp.login(a.auth[0], a.auth[1])
            code, msg = smtp.mail(a.sender)
            if code != 250:
                return _verdict(a, code, msg, "MAIL")
            for rcpt in a.to:
                code, msg = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    return _verdict(a, code, msg, f"RCPT {rcpt}")
            code, msg = smtp.data(body.encode())
            return _verdict(a, code, msg, "DATA")
    except smtplib.SMTPAuthenticationError as exc:
        return _verdict(a, exc.smtp_code, exc.smtp_error, "AUTH")
    except smtplib.SMTPConnectError as exc:  # a 4xx/5xx greeting (RFC 5321 §3.1: 554 instead of 220)
        return _verdict(a, exc.smtp_code, exc.smtp_error, "CONNECT")
    except (OSError, smtplib.SMTPException) as exc:
        print(f"send: {a.host}:{a.port}: {exc}")
        return 1


def tls_name(a: argparse.Namespace) -> int:
    """Print the subject common name of the certificate the server presents after STARTTLS."""
    import tempfile

    with smtplib.SMTP(a.host, a.port, local_hostname="probe.test", timeout=30) as smtp:
        smtp.starttls(context=_tls())
        der = smtp.sock.getpeercert(binary_form=True)
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
        pem.write(ssl.DER_cert_to_PEM_cert(der))
        pem.flush()
        decoded = ssl._ssl._test_decode_cert(pem.name)  # stdlib has no public parser for a peer's DER
    names = [value for rdn in decoded["subject"] for key, value in rdn if key == "commonName"]
    print(" ".join(names))
    return 0 if names else 1


def _verdict(a: argparse.Namespace, code: int, msg: bytes, step: str) -> int:
    text = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
    print(f"{step} {code} {text}")
    accepted = code == 250 and step == "DATA"
    if a.expect == "accepted":
        return 0 if accepted else 1
    return 0 if 500 <= code < 600 or (a.expect == "refused-any" and 400 <= code < 600) else 1


def _wait(found, timeout: float) -> object:
    """Poll `found` until it returns something or `timeout` passes; protocol errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = found()
        except (OSError, imaplib.IMAP4.error, poplib.error_proto) as exc:
            result, error = None, exc
        else:
            error = None
        if result or time.monotonic() > deadline:
            if not result and error is not None:
                print(f"last error: {error}")
            return result
        time.sleep(0.5)


def _files_with_subject(root: Path, subject: str, parts: tuple[str, ...]) -> list[Path]:
    needle = f"Subject: {subject}".encode()
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and (not parts or path.parent.name in parts):
            try:
                if needle in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def maildir(a: argparse.Namespace) -> int:
    root = Path(a.root)
    hits = _wait(lambda: _files_with_subject(root, a.subject, ("new", "cur")), 0 if a.absent else a.timeout)
    if a.absent:
        print(f"maildir: {len(hits or [])} message(s) with subject {a.subject}")
        return 0 if not hits else 1
    print("\n".join(str(h) for h in hits) if hits else f"maildir: no message with subject {a.subject} in {root}")
    return 0 if hits else 1


def sinkdir(a: argparse.Namespace) -> int:
    hits = _wait(lambda: _files_with_subject(Path(a.root), a.subject, ()), a.timeout)
    print("\n".join(str(h) for h in hits) if hits else f"sinkdir: no message with subject {a.subject}")
    return 0 if hits else 1


def imap(a: argparse.Namespace) -> int:
    """Find the subject in one folder of the user's (INBOX, Junk, ...), over IMAP with STARTTLS; --absent: it is
    not there now (a folder that does not exist counts as holding nothing)."""
    def look() -> str | None:
        with imaplib.IMAP4(a.host, a.port or 143, timeout=30) as conn:
            conn.starttls(ssl_context=_tls())
            conn.login(a.user, a.password)
            typ, _ = conn.select(f'"{a.folder}"', readonly=True)
            if typ != "OK":
                return None
            typ, data = conn.search(None, "SUBJECT", f'"{a.subject}"')
            ids = data[0].split() if typ == "OK" and data and data[0] else []
            if not ids:
                return None
            typ, fetched = conn.fetch(ids[-1], "(BODY.PEEK[HEADER.FIELDS (SUBJECT X-SPAM-FLAG)])")
            headers = " ".join(fetched[0][1].decode().split())
            return f"imap: {a.user} {a.folder} message {ids[-1].decode()}: {headers}"
    if a.absent:
        found = look()
        print(found or f"imap: no message with subject {a.subject} in {a.user}'s {a.folder}")
        return 1 if found else 0
    return _report(_wait(look, a.timeout), f"imap: no message with subject {a.subject} in {a.user}'s {a.folder}")


def pop3(a: argparse.Namespace) -> int:
    def look() -> str | None:
        conn = poplib.POP3(a.host, a.port or 110, timeout=30)
        try:
            conn.stls(context=_tls())
            conn.user(a.user)
            conn.pass_(a.password)
            count, _ = conn.stat()
            for i in range(count, 0, -1):
                _, lines, _ = conn.retr(i)
                msg = email.message_from_bytes(b"\r\n".join(lines))
                if msg["Subject"] == a.subject:
                    return f"pop3: {a.user} message {i} of {count}: Subject: {a.subject}"
            return None
        finally:
            conn.quit()
    return _report(_wait(look, a.timeout), f"pop3: no message with subject {a.subject} for {a.user}")


def _report(result: object, missing: str) -> int:
    print(result or missing)
    return 0 if result else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="mailprobe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=25)
    s.add_argument("--sender", required=True)
    s.add_argument("--to", action="append", required=True)
    s.add_argument("--subject", required=True)
    s.add_argument("--starttls", action="store_true")
    s.add_argument("--auth", nargs=2, metavar=("USER", "PASSWORD"))
    s.add_argument("--payload", choices=["eicar", "gtube"])
    s.add_argument("--header", action="append", default=[], help='an extra header field, "Name: value"')
    s.add_argument("--expect", choices=["accepted", "refused", "refused-any"], default="accepted")
    m = sub.add_parser("maildir")
    m.add_argument("--root", required=True)
    m.add_argument("--subject", required=True)
    m.add_argument("--timeout", type=float, default=60)
    m.add_argument("--absent", action="store_true")
    t = sub.add_parser("tls-name")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=25)
    k = sub.add_parser("sinkdir")
    k.add_argument("--root", required=True)
    k.add_argument("--subject", required=True)
    k.add_argument("--timeout", type=float, default=60)
    for name in ("imap", "pop3"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int)
        p.add_argument("--user", required=True)
        p.add_argument("--password", required=True)
        p.add_argument("--subject", required=True)
        p.add_argument("--timeout", type=float, default=30)
        if name == "imap":
            p.add_argument("--folder", default="INBOX")
            p.add_argument("--absent", action="store_true")
    args = parser.parse_args()
    commands = {"send": send, "maildir": maildir, "sinkdir": sinkdir, "imap": imap, "pop3": pop3,
                "tls-name": tls_name}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
