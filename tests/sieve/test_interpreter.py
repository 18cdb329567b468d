"""What a script decides for a message (the actions, before local delivery carries them out)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.sieve import parse
from appliance.sieve.interpreter import (
    Environment,
    FileInto,
    Redirect,
    Reject,
    SieveRuntimeError,
    Vacation,
    run_sequence,
)
from appliance.sieve.mail import MailView
from appliance.sieve.matching import glob

MESSAGE = (b"Return-Path: <alice@far.test>\r\n"
           b"From: Alice <alice@far.test>\r\n"
           b"To: Bob <bob+lists@home.test>, carol@home.test\r\n"
           b"Subject: =?utf-8?q?caf=C3=A9?= meeting\r\n"
           b"Date: Tue, 01 Dec 2026 09:30:00 +0100\r\n"
           b"X-Spam-Score: 7\r\n"
           b"Message-ID: <m1@far.test>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"the secret word is caf=C3=A9\r\n"
           b"--b\r\nContent-Type: text/html\r\n\r\n<p>html part</p>\r\n--b--\r\n")


def decide(text: str, data: bytes = MESSAGE, rcpt: str = "bob+lists@home.test", mail_from: str = "alice@far.test",
           **env: object) -> list:
    view = MailView(data, mail_from, rcpt, rcpt)
    environment = Environment(view, datetime(2026, 12, 4, 12, 0, tzinfo=UTC), **env)  # type: ignore[arg-type]
    return run_sequence([parse(text)], environment).final()


INBOX = FileInto("INBOX")


@pytest.mark.parametrize(("script", "actions"), [
    ("keep;", [INBOX]),
    ("discard;", []),
    ('if header :contains "subject" "café" { discard; }', []),  # RFC 2047 decoded
    ('if header :is "subject" "CAFÉ MEETING" { discard; }', [INBOX]),  # ascii-casemap folds ASCII only
    ('if header :matches "subject" "caf? *" { discard; }', []),
    ('if address :domain "from" "FAR.test" { discard; }', []),
    ('if address :localpart :is "to" "carol" { discard; }', []),
    ('require "envelope"; if envelope :is "from" "alice@far.test" { discard; }', []),
    ('if exists ["x-spam-score", "date"] { discard; }', []),
    ('if exists "x-nothing" { discard; }', [INBOX]),
    ("if size :over 100 { discard; }", []),
    ("if size :under 100 { discard; }", [INBOX]),
    ('if anyof (false, not true) { discard; }', [INBOX]),
    ('if allof (true, not false) { discard; }', []),
    ('require "fileinto"; if header :contains "subject" "meeting" { fileinto "Work"; }', [FileInto("Work")]),
    ('require ["fileinto", "copy"]; fileinto :copy "Work";', [FileInto("Work"), INBOX]),
    ('require "fileinto"; fileinto "A"; fileinto "A"; fileinto "B";', [FileInto("A"), FileInto("B")]),
    ('redirect "dave@else.test";', [Redirect("dave@else.test")]),
    ('require "copy"; redirect :copy "dave@else.test";', [Redirect("dave@else.test"), INBOX]),
    ('require "reject"; reject "not you";', [Reject("not you", False)]),
    ('require ["subaddress", "envelope"]; if envelope :detail "to" "lists" { discard; }', []),
    ('require ["subaddress", "envelope"]; if envelope :user "to" "bob" { discard; }', []),
    ('require ["subaddress", "envelope"]; if envelope :detail "to" "other" { discard; }', [INBOX]),
    ('require ["relational", "comparator-i;ascii-numeric"];'
     'if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" { discard; }', []),
    ('require "relational"; if address :count "eq" "to" "2" { discard; }', []),
    ('require "body"; if body :contains "secret word is café" { discard; }', []),  # decoded text part
    ('require "body"; if body :content "text/html" :contains "html part" { discard; }', []),
    ('require "body"; if body :raw :contains "caf=C3=A9" { discard; }', []),
    ('require ["date", "relational"]; if date :value "ge" :zone "+0000" "date" "hour" "08" { discard; }', []),
    ('require "date"; if date :is :originalzone "date" "zone" "+0100" { discard; }', []),
    ('require "date"; if currentdate :is :zone "+0000" "date" "2026-12-04" { discard; }', []),
    ('require "date"; if currentdate :is :zone "+0000" "weekday" "5" { discard; }', []),
    ('require "imap4flags"; addflag "\\\\Seen"; addflag ["$Work", "\\\\seen"]; removeflag "$nothing";',
     [FileInto("INBOX", ("\\Seen", "$Work"))]),
    ('require ["imap4flags", "fileinto"]; setflag "\\\\Flagged"; fileinto "A"; fileinto :flags "x" "B";',
     [FileInto("A", ("\\Flagged",)), FileInto("B", ("x",))]),
    ('require "imap4flags"; addflag "a b"; if hasflag :is "b" { discard; }', []),
])
def test_actions(script: str, actions: list) -> None:
    assert decide(script) == actions


def test_variables_and_match_variables() -> None:
    actions = decide('require ["variables", "fileinto"];\n'
                     'if header :matches "subject" "* meeting" { set :upper "what" "${1}"; }\n'
                     'set "n" "x"; set :length "len" "${what}";\n'
                     'fileinto "f/${what}/${len}/${unknown}";')
    assert actions == [FileInto("f/CAFÉ/4/")]


def test_vacation_days_are_clamped_and_the_handle_is_stable() -> None:
    script = 'require "vacation"; vacation :days 90 :subject "Away" "I am away";'
    first, second = decide(script, vacation_days=(1, 30)), decide(script, vacation_days=(1, 30))
    assert isinstance(first[0], Vacation) and first[0].seconds == 30 * 86400 and first == second
    assert first[1] == INBOX  # vacation keeps the message (RFC 5230 §4.7)
    low = decide('require "vacation"; vacation :days 0 "x";', vacation_days=(2, 30))
    assert low[0].seconds == 2 * 86400


@pytest.mark.parametrize(("script", "error"), [
    ('redirect "a@b.test"; redirect "c@d.test"; redirect "e@f.test";', "line 1: more than 2 redirects"),
    ('redirect "not an address";', "invalid address"),
    ('require ["reject", "fileinto"]; fileinto "A"; reject "no";', "reject conflicts"),
    ('require "vacation"; vacation "a"; vacation :handle "x" "b";', "vacation given twice"),
    ('require "comparator-i;ascii-numeric"; if header :contains :comparator "i;ascii-numeric" "subject" "1" {stop;}',
     "cannot be used with :contains"),
])
def test_runtime_errors(script: str, error: str) -> None:
    with pytest.raises(SieveRuntimeError, match=error):
        decide(script, max_redirects=2)


def test_stop_ends_the_script_and_the_next_runs_only_while_the_implicit_keep_remains() -> None:
    view = MailView(MESSAGE, "alice@far.test", "bob@home.test", "bob@home.test")
    env = Environment(view, datetime(2026, 12, 4, tzinfo=UTC))
    before = parse('require "fileinto"; if header :contains "x-spam-score" "7" { fileinto "Junk"; stop; }')
    user = parse("discard;")
    assert run_sequence([before, user], env).final() == [FileInto("Junk")]
    kept = parse('require ["fileinto", "copy"]; fileinto :copy "Archive"; stop; discard;')
    assert run_sequence([kept, user], env).final() == [FileInto("Archive")]


@given(st.text(alphabet="ab*?\\", max_size=8), st.text(alphabet="abAB", max_size=10))
def test_matches_captures_what_a_backtracking_matcher_finds(pattern: str, text: str) -> None:
    """:matches without backtracking agrees with the obvious (exponential) regular expression: same answer,
    same captures (RFC 5229 §3.2: each wildcard as short as possible, leftmost first)."""
    parts, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            parts.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        parts.append("(.*?)" if char == "*" else "(.)" if char == "?" else re.escape(char))
        index += 1
    expected = re.compile("".join(parts), re.DOTALL | re.IGNORECASE | re.ASCII).fullmatch(text)
    assert glob(pattern, text, fold=True) == (list(expected.groups()) if expected else None)


def test_matches_is_not_exponential() -> None:
    assert glob("*a*a*a*a*a*a*a*a*a*a*b", "a" * 5000, fold=False) is None
