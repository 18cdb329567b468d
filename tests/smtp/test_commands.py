"""The SMTP command parser alone (smtp.commands): any bytes give a command or the refusal, never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.smtp.commands import (
    BAD_SYNTAX,
    NUL_IN_COMMAND,
    CommandError,
    MailParams,
    check_mail_params,
    parse_command,
    parse_params,
    strip_keyword,
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_any_line_is_a_command_or_bad_syntax(line: bytes) -> None:
    try:
        command = parse_command(line + b"\r\n")
    except CommandError as exc:
        assert exc.reply == (NUL_IN_COMMAND if b"\0" in line else BAD_SYNTAX)
        return
    assert b"\0" not in line
    assert command.verb == command.verb.upper() and command.verb.isascii()
    assert command.length == len(line.rstrip(b"\r\n"))
    if command.arg is not None:  # the argument gives back the client's bytes
        assert command.arg.encode("utf-8", "surrogateescape") in line


def test_verbs_and_arguments() -> None:
    assert parse_command(b"mail FROM:<a@b.c>  SIZE=10\r\n").verb == "MAIL"
    assert parse_command(b"mail FROM:<a@b.c>  SIZE=10\r\n").arg == "FROM:<a@b.c>  SIZE=10"
    assert parse_command(b"QUIT\n").arg is None  # a bare LF ends a command line, as in Postfix and aiosmtpd
    assert parse_command("RCPT TO:<jürgen@b.c>\r\n".encode()).arg == "TO:<jürgen@b.c>"
    for bad in (b"\r\n", b"\n", "MÄIL FROM:<a@b>\r\n".encode()):
        with pytest.raises(CommandError):
            parse_command(bad)
    for nul in (b"EHLO a\0b\r\n", b"\0\r\n", b"MAIL FROM:<a@b.c>\0\r\n"):
        with pytest.raises(CommandError, match="NUL"):
            parse_command(nul)


def test_keyword() -> None:
    assert strip_keyword("FROM:", "from: <a@b>") == "<a@b>"
    assert strip_keyword("FROM:", "TO:<a@b>") is None


def test_params() -> None:
    assert parse_params(["SIZE=10", "BODY=8BITMIME", "SMTPUTF8"]) == {"SIZE": "10", "BODY": "8BITMIME",
                                                                       "SMTPUTF8": True}
    for bad in (["SIZE="], ["=10"], ["X-Y=1"], ["SIZE=1", "A B"]):
        assert parse_params(bad) is None, bad


def test_mail_params() -> None:
    syntax = "501 Syntax: MAIL FROM: <address>"
    assert check_mail_params({"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": True}, 1000, syntax) == \
        MailParams(True, 100)
    assert check_mail_params({"SIZE": "2000"}, 1000, syntax).startswith("552 ")  # RFC 1870 §6.1
    assert check_mail_params({"SIZE": "x"}, 1000, syntax) == syntax
    assert check_mail_params({"BODY": "BINARYMIME"}, 0, syntax).startswith("501 ")
    assert check_mail_params({"SMTPUTF8": "yes"}, 0, syntax).startswith("501 ")
    assert check_mail_params({"RET": "FULL"}, 0, syntax).startswith("555 ")  # no DSN extension announced
