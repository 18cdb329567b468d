"""Test clients: one sending a test message over SMTP and returning the queue ID the 250 names, one giving the
reply to DATA from an asyncio test."""

from __future__ import annotations

import smtplib

import aiosmtplib


def send(port: int, sender: str, rcpts: list[str], subject: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as conn:
        conn.ehlo("client.test")
        code, reply = conn.docmd("MAIL", f"FROM:<{sender}>")
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = conn.docmd("RCPT", f"TO:<{rcpt}>")
            assert code == 250, reply
        code, reply = conn.data(f"Subject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nbody\r\n".encode())
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[1]


async def data_reply(port: int, sender: str, rcpt: str, data: bytes) -> aiosmtplib.SMTPResponse:
    """One transaction over aiosmtplib from an asyncio test (its server on the same loop): the reply to DATA,
    a refusal included."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
    await smtp.connect()
    try:
        await smtp.ehlo(hostname="client.test")
        await smtp.mail(sender)
        await smtp.rcpt(rcpt)
        try:
            return await smtp.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            return aiosmtplib.SMTPResponse(exc.code, exc.message)
    finally:
        await smtp.quit()
