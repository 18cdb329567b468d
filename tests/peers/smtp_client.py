"""A client sending one test message over SMTP and returning the queue ID the 250 names."""

from __future__ import annotations

import smtplib


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
