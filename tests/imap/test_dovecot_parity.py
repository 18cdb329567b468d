"""Side by side with Dovecot: the same messages, the same command sequences, the same answers.

Both servers get identical messages (flags and internal dates included). Each scripted session runs
against both and the responses are compared after masking what legitimately differs (human text
after status codes, UIDVALIDITY values, MODSEQ numbering, capability lists, LIST order).

Deliberate differences (not in the scripts): we create no keyword on SEARCH KEYWORD, refuse STORE
in an EXAMINEd mailbox with NO [READ-ONLY] (RFC 3501 §6.3.2; Dovecot answers OK), refuse RENAME onto
an existing name, evaluate NOT (a b) as RFC 3501 says, and answer a FETCH of a message another
session expunged (not yet reported) with NO [EXPUNGEISSUED] (RFC 2180 §4.1.2, RFC 5530) where
Dovecot returns its last known data.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.imap.conftest import PASSWORD, ImapServer, RawClient
from tests.imap.dovecot_peer import DOVECOT, Dovecot, start_dovecot


@pytest.fixture(autouse=True)
def _dovecot_installed() -> None:
    """A missing reference server is an install fault to report, not a test to skip."""
    if not os.path.exists(DOVECOT):
        pytest.fail("dovecot-imapd is not installed; `make apt` installs it")

CORPUS: list[tuple[bytes, str, datetime]] = [
    (b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nFrom: Fred Foobar <foobar@Blurdybloop.example>\r\n"
     b"Subject: afternoon meeting\r\nTo: mooch@owatagu.siam.edu.example\r\n"
     b"Message-Id: <B27397-0100000@Blurdybloop.example>\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\nHello Joe, do you think we can meet at 3:30 tomorrow?\r\n",
     "S", datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)),
    (b"From: =?UTF-8?Q?J=C3=B6rg?= <joerg@example.net>\r\nTo: A Group:Ed Jones <c@a.test>,joe@where.test;, "
     b"\"Doe, Jane\" <jane@example.org>\r\nCc: undisclosed-recipients:;\r\nSubject: =?UTF-8?B?w5xiZXJzaWNodA==?=\r\n"
     b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\nIn-Reply-To: <x@y>\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\nThis is a preamble.\r\n"
     b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
     b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
     b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\nzweite Zeile\r\n"
     b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Gr\xc3\xbc\xc3\x9fe</p>\r\n--inner--\r\n"
     b"--outer\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
     b"Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n"
     b"Content-ID: <part2@example.net>\r\nContent-Description: some data\r\n\r\nAAECAwQFBgcICQ==\r\n"
     b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
     b"From: inner@example.com\r\nSubject: forwarded\r\nDate: Wed, 2 Jul 2003 01:00:00 +0000\r\n"
     b"Content-Type: text/plain\r\n\r\nInner body line 1\r\nline 2\r\n"
     b"--outer--\r\nepilogue\r\n",
     "", datetime(2021, 6, 7, 8, 9, 10, tzinfo=UTC)),
    (b"From: bob@example.net\r\nTo: alice@example.org\r\nSubject: no date, flagged\r\n\r\n" + b"x" * 3000 + b"\r\n",
     "FR", datetime(2022, 2, 2, 2, 2, 2, tzinfo=UTC)),
    (b"From: carol@example.net\r\nSubject: draft\r\nX-Custom: Hello World\r\n\r\nshort\r\n",
     "D", datetime(2023, 3, 3, 3, 3, 3, tzinfo=UTC)),
]

MAILDIR_FLAGS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered", "D": "\\Draft", "T": "\\Deleted"}


@pytest.fixture
def pair(imap_server: ImapServer) -> Iterator[tuple[ImapServer, Dovecot]]:
    base = Path(tempfile.mkdtemp(prefix="mailfleet-dovecot-"))
    os.chmod(base, 0o755)
    maildir = base / "mail" / "example.org" / "alice"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i, (data, flags, when) in enumerate(CORPUS):
        imap_server.deliver(data, flags=[MAILDIR_FLAGS[f] for f in flags], internal_date=when)
        path = maildir / "cur" / f"{1600000000 + i}.M{i}P1.test:2,{''.join(sorted(flags))}"
        path.write_bytes(data)
        os.utime(path, (when.timestamp(), when.timestamp()))
    dovecot = start_dovecot(base / "dovecot", base / "mail", {"alice@example.org": PASSWORD})
    try:
        yield imap_server, dovecot
    finally:
        dovecot.stop()
        shutil.rmtree(base, ignore_errors=True)


_CODE = re.compile(rb"^(\S+) (OK|NO|BAD|BYE|PREAUTH)( \[[^\]]*\])?.*$", re.S)


def normalise(lines: list[bytes]) -> list[bytes]:
    if any(line.startswith((b"* LIST", b"* LSUB")) for line in lines):
        lines = sorted(lines[:-1]) + lines[-1:]  # LIST (and LIST-STATUS) answers have no order
    out: list[bytes] = []
    listing: list[bytes] = []
    for line in lines:
        line = line.rstrip(b"\r\n")
        if b"HIGHESTMODSEQ" in line or line.startswith(b"* CAPABILITY") or b"[CLOSED]" in line:
            continue
        if line.startswith(b"* OK [MAILBOXID "):
            continue  # OBJECTID (RFC 8474), which Dovecot 2.3 lacks
        line = re.sub(rb" \[MAILBOXID \([^)]*\)\]", b"", line)
        line = re.sub(rb"MODSEQ \(\d+\)", b"MODSEQ (n)", line)
        line = re.sub(rb"(UIDVALIDITY|APPENDUID|COPYUID) \d+", rb"\1 v", line)
        line = re.sub(rb" \(MODSEQ \d+\)", b"", line)
        match = _CODE.match(line)
        if match and not line.startswith(b"* OK [PERMANENTFLAGS"):
            code = match.group(3) or b""
            if code.startswith(b" [CAPABILITY"):
                code = b""
            line = match.group(1) + b" " + match.group(2) + code
        if line.startswith((b"* LIST", b"* LSUB")):
            listing.append(line)
            continue
        out += sorted(listing)
        listing = []
        out.append(line)
    return out + sorted(listing)


def run_script(port: int, script: list[str]) -> list[list[bytes]]:
    client = RawClient("127.0.0.1", port)
    client.login()
    replies = []
    for i, command in enumerate(script):
        replies.append(normalise(client.command(f"c{i}", command.encode())))
    client.close()
    return replies


def compare(pair: tuple[ImapServer, Dovecot], script: list[str]) -> None:
    ours, dovecot = pair
    mine = run_script(ours.port, script)
    theirs = run_script(dovecot.port, script)
    for command, a, b in zip(script, mine, theirs, strict=True):
        assert a == b, f"{command!r}:\n  mailfleet: {a}\n  dovecot:   {b}"


def test_select_and_fetch_like_dovecot(pair) -> None:
    compare(pair, [
        "SELECT INBOX",
        "FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)",
        "FETCH 1:* ENVELOPE",
        "FETCH 1:* BODYSTRUCTURE",
        "FETCH 1:* BODY",
        "FETCH 2 (BODY.PEEK[1] BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2] BODY.PEEK[3] BODY.PEEK[3.HEADER])",
        "FETCH 2 (BODY.PEEK[3.TEXT] BODY.PEEK[3.1] BODY.PEEK[4] BODY.PEEK[1.3] BODY.PEEK[TEXT]<10.20>)",
        "FETCH 1:4 (BODY.PEEK[HEADER.FIELDS (Subject From)] BODY.PEEK[HEADER.FIELDS.NOT (Subject From Date)])",
        "FETCH 4 (RFC822.HEADER RFC822.TEXT)",
        "FETCH 1 (BODY[]<0.10> BODY.PEEK[HEADER]<5.5>)",
        "FETCH 4 (BODY.PEEK[]<1000.10> BODY.PEEK[TEXT]<2.100> BODY.PEEK[1]<0.3>)",
        "FETCH 2 (BODY.PEEK[3.1.MIME] BODY.PEEK[3.HEADER.FIELDS (SUBJECT)] BODY.PEEK[1.HEADER])",
        "FETCH 4 RFC822",
        "FETCH 1:* FLAGS",
        "UID FETCH 2:3 (FLAGS)",
        "UID FETCH 10:* FLAGS",
        "FETCH 1:* FAST",
        "FETCH 1,3 ALL",
    ])


def test_search_like_dovecot(pair) -> None:
    compare(pair, [
        "SELECT INBOX",
        "SEARCH ALL",
        "SEARCH SEEN",
        "SEARCH UNSEEN",
        "SEARCH FLAGGED ANSWERED",
        "SEARCH DRAFT",
        "SEARCH NOT DRAFT",
        "SEARCH OR DRAFT FLAGGED",
        "SEARCH LARGER 1000",
        "SEARCH SMALLER 1000",
        "SEARCH FROM joerg",
        "SEARCH FROM foobar",
        "SEARCH SUBJECT meeting",
        "SEARCH TO jane",
        "SEARCH CC undisclosed",
        "SEARCH HEADER X-Custom world",
        "SEARCH HEADER Message-Id \"\"",
        "SEARCH BODY tomorrow",
        "SEARCH TEXT blurdybloop",
        "SEARCH BEFORE 1-Jan-2021",
        "SEARCH SINCE 7-Jun-2021",
        "SEARCH ON 7-Jun-2021",
        "SEARCH SENTBEFORE 1-Jan-2000",
        "SEARCH SENTSINCE 1-Jan-2000",
        "SEARCH SENTON 1-Jul-2003",
        "SEARCH 2:3",
        "SEARCH UID 1,4",
        "UID SEARCH UNDRAFT",
        "SEARCH CHARSET UTF-8 SUBJECT meeting",
        "SEARCH CHARSET X-UNKNOWN ALL",
        "SEARCH NEW",
        "SEARCH OLD",
        "SEARCH RECENT",
    ])


def test_store_copy_move_expunge_like_dovecot(pair) -> None:
    compare(pair, [
        "SELECT INBOX",
        "STORE 1 +FLAGS (\\Flagged)",
        "STORE 2 FLAGS (\\Seen $Label1)",
        "STORE 1:2 -FLAGS (\\Seen)",
        "STORE 3 +FLAGS.SILENT (\\Deleted)",
        "UID STORE 4 +FLAGS (\\Answered)",
        "FETCH 1:* FLAGS",
        "COPY 1:2 Archive",
        "COPY 1 NoSuchFolder",
        "UID MOVE 2 Trash",
        "FETCH 1:* (UID FLAGS)",
        "EXPUNGE",
        "STATUS Archive (MESSAGES UIDNEXT UNSEEN RECENT)",
        "STATUS Trash (MESSAGES UIDNEXT UNSEEN)",
        "SELECT Archive",
        "FETCH 1:* (UID FLAGS)",
        "STORE 1 +FLAGS (\\Deleted)",
        "CLOSE",
        "STATUS Archive (MESSAGES)",
    ])


def test_mailbox_management_like_dovecot(pair) -> None:
    compare(pair, [
        'LIST "" *',
        'LIST "" %',
        'LIST "" ""',
        "CREATE Projects/2024/Q1",
        'LIST "" *',
        "CREATE Projects",
        'LIST "" *',
        'LIST Projects/ %',
        'LIST "" Projects/*',
        'LSUB "" *',
        "CREATE INBOX",
        "RENAME Projects/2024 Projects/2025",
        'LIST "" Projects*',
        "RENAME NoSuch Other",
        "DELETE NoSuch",
        "DELETE INBOX",
        "DELETE Projects/2025/Q1",
        "STATUS Projects/2025 (MESSAGES UIDNEXT UNSEEN RECENT)",
        "SUBSCRIBE Projects",
        'LSUB "" Projects*',
        "UNSUBSCRIBE Projects",
        "EXAMINE INBOX",
        "FETCH 1 (BODY[TEXT])",
        "FETCH 1 FLAGS",
        "NAMESPACE",
        "SELECT NoSuch",
        "FETCH 1 FLAGS",
    ])


def test_errors_like_dovecot(pair) -> None:
    compare(pair, [
        "SELECT INBOX",
        "FETCH 0 FLAGS",
        "FETCH 9 FLAGS",
        "FETCH 1 (FLAGS",
        "FETCH 1 FROB",
        "STORE 1 +FLAGS (\\Frob)",
        "STORE 1 FLAGZ (\\Seen)",
        "SEARCH FROB",
        "UID FROB 1",
        "FROB",
        "COPY 1:* \"\"",
        "APPEND INBOX {0+}\r\n",
    ])


def test_list_extended_like_dovecot(pair) -> None:
    compare(pair, [
        "CREATE Lists",
        "CREATE Lists/python",
        "SUBSCRIBE Lists/python",
        'LIST (SPECIAL-USE) "" *',
        'LIST "" * RETURN (SPECIAL-USE)',
        'LIST "" * RETURN (CHILDREN)',
        'LIST (SUBSCRIBED) "" *',
        'LIST "" * RETURN (SUBSCRIBED)',
        'LIST "" (INBOX Lists/*)',
        'LIST "" % RETURN (STATUS (MESSAGES UNSEEN))',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" %',
        "STATUS INBOX (SIZE MESSAGES)",
        "SELECT INBOX",
        "UID SEARCH RETURN (MIN MAX COUNT) ALL",
        "SEARCH RETURN () SEEN",
        "SEARCH RETURN (COUNT) NOT ALL",
    ])


def run_pair(port: int, script: list[tuple[int, str]]) -> list[list[bytes]]:
    """Two sessions on the same INBOX; each step is (session 0 or 1, command)."""
    clients = [RawClient("127.0.0.1", port), RawClient("127.0.0.1", port)]
    for client in clients:
        client.login()
    replies = [normalise(clients[who].command(f"p{i}", command.encode())) for i, (who, command) in enumerate(script)]
    for client in clients:
        client.close()
    return replies


def test_two_sessions_like_dovecot(pair) -> None:
    """What one session sees of another's changes: EXISTS, RECENT, FETCH FLAGS, EXPUNGE, at the right time."""
    script = [
        (0, "SELECT INBOX"),
        (1, "SELECT INBOX"),
        (0, "STORE 1 +FLAGS (\\Flagged)"),
        (1, "NOOP"),
        (0, "APPEND INBOX (\\Seen) {5+}\r\nhello"),
        (1, "NOOP"),
        (0, "STORE 2 +FLAGS (\\Deleted)"),
        (0, "EXPUNGE"),
        (1, "NOOP"),
        (1, "FETCH 1:* (UID FLAGS)"),
        (0, "STORE 3 +FLAGS (\\Deleted)"),
        (0, "EXPUNGE"),
        (1, "UID STORE 5 +FLAGS (\\Answered)"),
        (1, "UID FETCH 1:* (FLAGS)"),
        (1, "STORE 1 -FLAGS (\\Flagged)"),
        (0, "FETCH 1 FLAGS"),
        (0, "UID SEARCH ALL"),
        (1, "SEARCH ALL"),
    ]
    ours, dovecot = pair
    mine = run_pair(ours.port, script)
    theirs = run_pair(dovecot.port, script)
    for (who, command), a, b in zip(script, mine, theirs, strict=True):
        assert a == b, f"session {who} {command!r}:\n  mailfleet: {a}\n  dovecot:   {b}"


ATOM_SPECIALS_NAME = "!#$&'+,-.0123456789:;<=>?@^_`|[}"  # an atom, but not valid modified UTF-7


def test_mailbox_names_and_subscriptions_like_dovecot(pair) -> None:
    """Names that are not modified UTF-7 are NO (no such mailbox can exist), not BAD, and work as LIST
    patterns; SUBSCRIBE needs an existing mailbox; RECURSIVEMATCH gives CHILDINFO only for a child the
    patterns do not list themselves (RFC 5258 §3.5)."""
    compare(pair, [
        f'SELECT "{ATOM_SPECIALS_NAME}"',
        f"SELECT {ATOM_SPECIALS_NAME}",
        f'EXAMINE "{ATOM_SPECIALS_NAME}"',
        f'STATUS "{ATOM_SPECIALS_NAME}" (MESSAGES)',
        f'CREATE "{ATOM_SPECIALS_NAME}"',
        f'LIST "" "{ATOM_SPECIALS_NAME}"',
        f'LIST "" "{ATOM_SPECIALS_NAME}*"',
        'SELECT "&Jjo-"',
        'SELECT "&AGE-"',
        'LIST "" "&"',
        "SUBSCRIBE nosuch",
        f'SUBSCRIBE "{ATOM_SPECIALS_NAME}"',
        "UNSUBSCRIBE nosuch",
        'LSUB "" *',
        "CREATE x/test2/test1",
        "SUBSCRIBE x/test2",
        "SUBSCRIBE x/test2/test1",
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" (x/test2 x/test2/test1)',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" (x/test2)',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" (x/%)',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" *',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" (x/test2 x/test2/test1) RETURN (CHILDREN)',
        "CREATE y",
        "CREATE y/z",
        "CREATE y/z/w",
        "SUBSCRIBE y",
        "SUBSCRIBE y/z/w",
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" (y y/z/w)',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" (y y/z)',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" (y/% y/z/w)',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" y/%',
        'LIST (SUBSCRIBED RECURSIVEMATCH) "" %',
    ])


def _keywords_sorted(lines: list[bytes]) -> list[bytes]:
    """FLAGS and PERMANENTFLAGS with their keywords sorted: Dovecot lists keywords in the order they
    were created, we in name order; RFC 3501 §7.2.6 gives the list no order."""
    def sort_list(match: re.Match[bytes]) -> bytes:
        return match.group(1) + b" ".join(sorted(match.group(2).split())) + b")"
    return [re.sub(rb"^(\* FLAGS \(|\* OK \[PERMANENTFLAGS \()([^)]*)\)", sort_list, line) for line in lines]


def test_new_keyword_of_another_session_like_dovecot(pair) -> None:
    """RFC 3501 §7.2.6: a keyword another session created is announced in FLAGS and PERMANENTFLAGS
    before any FETCH shows it, whichever command reports it."""
    script = [
        (0, "SELECT INBOX"),
        (1, "SELECT INBOX"),
        (0, "STORE 1 +FLAGS ($NewKw)"),
        (1, "NOOP"),
        (0, "STORE 1 +FLAGS ($Other)"),
        (1, "FETCH 1 FLAGS"),
        (0, "STORE 2 +FLAGS ($Third)"),
        (1, "STORE 2 +FLAGS (\\Draft)"),
        (0, "NOOP"),
        (0, "STORE 3 +FLAGS ($Fourth)"),
        (1, "FETCH 3 (UID FLAGS)"),
        (0, "STORE 4 +FLAGS ($Fifth)"),
        (1, "STORE 4 +FLAGS.SILENT (\\Answered)"),
        (0, "NOOP"),
        (0, "APPEND INBOX ($Sixth) {5+}\r\nhello"),
        (1, "NOOP"),
        (1, "FETCH 5 FLAGS"),
    ]
    ours, dovecot = pair
    mine = run_pair(ours.port, script)
    theirs = run_pair(dovecot.port, script)
    for (who, command), a, b in zip(script, mine, theirs, strict=True):
        a, b = _keywords_sorted(a), _keywords_sorted(b)
        assert a == b, f"session {who} {command!r}:\n  mailfleet: {a}\n  dovecot:   {b}"
