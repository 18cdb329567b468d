"""8-bit to 7-bit conversion: the result is 7-bit, decodes to the same content, and leaves 7-bit mail alone."""

from __future__ import annotations

import email
from email import policy

import pytest

from appliance.delivery.mime_downgrade import CannotDowngrade, downgrade_to_7bit

MULTIPART = (
    "From: a@sender.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\npreamble\r\n"
    "--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÄpfel und Birnen\r\n"
    "--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xff\xfe raw\r\n"
    "--XX\r\nContent-Type: text/plain\r\n\r\nascii only\r\n--XX--\r\n"
)


def test_seven_bit_mail_is_returned_byte_for_byte() -> None:
    data = b"From: a@sender.test\r\nSubject: plain\r\n\r\nJust ASCII.\r\n"
    assert downgrade_to_7bit(data) is data


def test_multipart_leaves_are_reencoded() -> None:
    data = MULTIPART.encode("utf-8").replace("\xff\xfe".encode(), b"\xff\xfe")
    out = downgrade_to_7bit(data)
    assert out.isascii()
    parsed = email.message_from_bytes(out, policy=policy.default)
    assert parsed["Content-Transfer-Encoding"] == "7bit"
    text, binary, plain = parsed.get_payload()
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_content() == "Äpfel und Birnen"  # the CRLF before a boundary belongs to it
    assert binary["Content-Transfer-Encoding"] == "base64"
    assert binary.get_content() == b"\xff\xfe raw"
    assert plain.get_content() == "ascii only" and plain["Content-Transfer-Encoding"] is None


def test_non_mime_body_gets_mime_headers() -> None:
    out = downgrade_to_7bit("From: a@sender.test\r\nSubject: x\r\n\r\nschön\r\n".encode())
    parsed = email.message_from_bytes(out)
    assert parsed["MIME-Version"] == "1.0" and parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_payload(decode=True) == "schön\r\n".encode()


def test_eight_bit_headers_cannot_be_downgraded() -> None:
    with pytest.raises(CannotDowngrade):
        downgrade_to_7bit("From: a@sender.test\r\nSubject: Grüße\r\n\r\nx\r\n".encode())
