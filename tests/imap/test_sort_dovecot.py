"""SORT, THREAD and ESORT side by side with Dovecot 2.3 on the same tricky messages.

The corpus has subjects with Re:/Fwd:/[tags]/(fwd)/[Fwd: ...] and encoded words, dates that are
missing, invalid or in other time zones (and equal, for the mailbox-order tie break), address
headers with and without display names, groups and encoded names, and References/In-Reply-To
chains with missing parents, loops and duplicate Message-IDs. Both servers get the same files with
the same internal dates; every response must be equal (after the parity suite's masking).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.imap.conftest import PASSWORD, ImapServer
from tests.imap.dovecot_peer import DOVECOT, Dovecot, start_dovecot
from tests.imap.test_dovecot_parity import run_script

BASE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
# 4 and 5 share the missing parent <gone@t> (a dummy root); 13 and 14 are one subject thread;
# 16-17 reference each other (the loop is broken); 19 and 20 are non-replies with one subject;
# 23 names itself in References and takes the reply 22 of its subject as its child
REFERENCES_EXPECTED = (b"(6)((5)(4))(25 26)(1 (15)(2 3 24))(23 22)(21)(7 8)(9)(10)(12 11)(14 13)(17 16 18)"
                       b"((19)(20))")


def _msg(subject: str | None, date: str | None, sender: str | None, to: str | None, msgid: str | None,
         refs: str | None = None, reply_to: str | None = None, cc: str | None = None, body: str = "x") -> bytes:
    lines = []
    for name, value in (("From", sender), ("To", to), ("Cc", cc), ("Subject", subject), ("Date", date),
                        ("Message-ID", msgid), ("References", refs), ("In-Reply-To", reply_to)):
        if value is not None:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


CORPUS: list[bytes] = [
    _msg("hello", "Mon, 6 May 2024 10:00:00 +0000", "Zed <zed@z.test>", "bob@b.test", "<1@t>"),
    _msg("Re: hello", "Mon, 6 May 2024 11:00:00 +0000", "amy@a.test", "Zed <zed@z.test>", "<2@t>", "<1@t>"),
    _msg("[list] Re: [list] Fwd: Hello (fwd)", "Mon, 6 May 2024 09:00:00 -0300", "=?UTF-8?Q?=C3=89mile?= <e@e.test>",
         "carol@c.test", "<3@t>", "<1@t> <2@t>", body="y" * 500),
    _msg("[Fwd: Re: hi]", "Sun, 5 May 2024 23:30:00 -0700", "\"Doe, Jane\" <jane@d.test>", "A Group:ed@x.test;",
         "<4@t>", None, "<gone@t>"),
    _msg("hi", None, None, None, "<5@t>", "<gone@t>"),
    _msg("=?UTF-8?Q?R=C3=A9union?=", "not a date at all", "\u00e9lo\u00efse@u.test", "dan@d.test", None,
         cc="cc1@c.test"),
    _msg("=?ISO-8859-1?Q?Re=3A_caf=E9?=", "Tue, 7 May 2024 08:00:00 +0200", "bob@b.test",
         "=?UTF-8?B?w5xsaQ==?= <u@u.test>", "<7@t>", cc="Aaron <zz@c.test>"),
    _msg("re: Café", "Tue, 7 May 2024 06:00:00 +0000", "Bob <bob@b.test>", "u@u.test", "<8@t>", "<7@t>"),
    _msg("", "Wed, 8 May 2024 00:00:00 +0000", "yan@y.test", "", "<9@t>"),
    _msg(None, "Wed, 8 May 2024 00:00:00 +0000", "xia@x.test", None, "<10@t>"),
    _msg("[a]", "Thu, 9 May 2024 10:00:00 +0000", "Amy <amy@a.test>", "bob@b.test", "<11@t>", "<12@t>"),
    _msg("[a]", "Thu, 9 May 2024 09:00:00 +0000", "amy@a.test", "bob@b.test", "<12@t>", "<11@t>"),
    _msg("Re:    many   spaces  ", "Fri, 10 May 2024 10:00:00 +0000", "BOB@B.TEST", "bob@b.test", "<13@t>"),
    _msg("many spaces", "Fri, 10 May 2024 10:00:00 +0000", "bob@b.test", "bob@b.test", "<1@t>"),
    _msg("HELLO", "Mon, 6 May 2024 10:00:00 +0000", "zed@z.test", "Bob <bob@b.test>", "<15@t>", "<14@t> <1@t>"),
    _msg("Fw: loop", "Sat, 11 May 2024 10:00:00 +0100", "loop@l.test", "bob@b.test", "<16@t>", "<17@t>"),
    _msg("Re: loop", "Sat, 11 May 2024 09:00:00 +0100", "loop@l.test", "bob@b.test", "<17@t>", "<16@t>"),
    _msg("loop", "Sat, 11 May 2024 08:00:00 +0100", "loop@l.test", "bob@b.test", "<18@t>", None, "<16@t> <x@t>"),
    _msg("unrelated", "Sun, 12 May 2024 10:00:00 +1400", "(comment) old@o.test (Old Name)", "bob@b.test", "<19@t>",
         body="z" * 2000),
    _msg("unrelated", "Sat, 11 May 2024 22:00:00 -1000", "new@n.test", "bob@b.test", "<20@t>"),
    _msg("=?UTF-8?B?UmU6IFtGd2Q6IGjDqWxsb10=?=", "Mon, 6 May 2024 10:00:00 EST", "Friends: a@b.test;", None,
         "<21@t>", "<21@t>"),
    _msg("Re: folded\r\n\tsubject", "Mon, 6 May 2024 10:00:00", "=?UTF-8?Q?=C3=A4rger?= <ae@a.test>", None,
         "<22@t>", cc="Zoe <a@z.test>"),
    _msg("folded subject", "6 May 2024 10:00 +0000", "\"quoted name\" <q@q.test>", "Friends: a@b.test;", "<23@t>",
         "<22@t> <23@t>"),
    _msg("Re[3]: [tag]", "Mon, 6 May 2024 10:00:00 +0000", "tag@t.test", "zed@z.test", "<24@t>", None, "<3@t>"),
    _msg("(fwd) Re: x", "Mon, 32 May 2024 10:00:00 +0000", "x@x.test", "x@x.test", "<25@t>"),
    _msg("x (FWD)", "Mon, 6 May 2024 10:00:00 +0000", "x@x.test", "x@x.test", "<26@t>", "<25@t>"),
]


@pytest.fixture(autouse=True)
def _dovecot_installed() -> None:
    """A missing reference server is an install fault to report, not a test to skip."""
    if not os.path.exists(DOVECOT):
        pytest.fail("dovecot-imapd is not installed; `make apt` installs it")


@pytest.fixture
def pair(imap_server: ImapServer) -> Iterator[tuple[ImapServer, Dovecot]]:
    yield from _load(imap_server, CORPUS)


def _load(imap_server: ImapServer, corpus: list[bytes]) -> Iterator[tuple[ImapServer, Dovecot]]:
    base = Path(tempfile.mkdtemp(prefix="mailfleet-sort-dovecot-"))
    os.chmod(base, 0o755)
    maildir = base / "mail" / "example.org" / "alice"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i, data in enumerate(corpus):
        # internal dates not in corpus order, with ties, so that ARRIVAL and the DATE fallback show
        when = BASE + timedelta(hours=(i * 7) % 5)
        imap_server.deliver(data, internal_date=when)
        path = maildir / "cur" / f"{1600000000 + i}.M{i}P1.test:2,"
        path.write_bytes(data)
        os.utime(path, (when.timestamp(), when.timestamp()))
    dovecot = start_dovecot(base / "dovecot", base / "mail", {"alice@example.org": PASSWORD})
    try:
        yield imap_server, dovecot
    finally:
        dovecot.stop()
        shutil.rmtree(base, ignore_errors=True)


def _compare(pair: tuple[ImapServer, Dovecot], script: list[str]) -> list[list[bytes]]:
    """Run ``script`` on both; return our answers. One deliberate difference is masked: for no
    match Dovecot sends "* THREAD " where RFC 5256 §4's grammar has "* THREAD" (no trailing SP)."""
    ours, dovecot = pair
    mine = run_script(ours.port, script)
    theirs = [[line.rstrip(b" ") for line in reply] for reply in run_script(dovecot.port, script)]
    problems = [f"{command!r}:\n  mailfleet: {a}\n  dovecot:   {b}"
                for command, a, b in zip(script, mine, theirs, strict=True) if a != b]
    assert not problems, "\n".join(problems)
    return mine


def test_sort_like_dovecot(pair) -> None:
    _compare(pair, ["SELECT INBOX"] + [f"SORT ({key}) UTF-8 ALL" for key in (
        "ARRIVAL", "DATE", "SIZE", "SUBJECT", "FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO",
        "REVERSE DATE", "REVERSE SUBJECT", "SUBJECT DATE", "REVERSE SUBJECT REVERSE ARRIVAL", "FROM REVERSE SIZE",
    )] + [
        "UID SORT (SUBJECT) US-ASCII ALL",
        "SORT (DATE) UTF-8 FROM bob",
        "SORT (SUBJECT) UTF-8 SUBJECT nothing-matches",
        "SORT (DATE) X-UNKNOWN ALL",
        "SORT (NOSUCHKEY) UTF-8 ALL",
        "SORT (DATE) UTF-8",
    ])


def test_thread_like_dovecot(pair) -> None:
    answers = _compare(pair, [
        "SELECT INBOX",
        "THREAD REFERENCES UTF-8 ALL",
        "THREAD ORDEREDSUBJECT UTF-8 ALL",
        "UID THREAD REFERENCES UTF-8 ALL",
        "UID THREAD ORDEREDSUBJECT US-ASCII ALL",
        "THREAD REFERENCES UTF-8 SUBJECT loop",
        "THREAD REFERENCES UTF-8 NOT FROM bob",
        "THREAD REFERENCES UTF-8 SUBJECT nothing-matches",
        "THREAD NOSUCH UTF-8 ALL",
    ])
    # the corpus really threads: replies nest, a missing parent makes a dummy, subjects gather
    assert answers[1][0] == b"* THREAD " + REFERENCES_EXPECTED
    assert answers[7][0] == b"* THREAD"


def test_esort_like_dovecot(pair) -> None:
    _compare(pair, [
        "SELECT INBOX",
        "SORT RETURN (MIN MAX COUNT) (SUBJECT) UTF-8 ALL",
        "SORT RETURN (ALL) (DATE) UTF-8 ALL",
        "SORT RETURN () (ARRIVAL) UTF-8 ALL",
        "UID SORT RETURN (MIN MAX ALL COUNT) (REVERSE SIZE) UTF-8 ALL",
        "SORT RETURN (COUNT MIN) (DATE) UTF-8 SUBJECT nothing-matches",
        "SORT (REVERSE DATE) UTF-8 MODSEQ 1",
    ])


_PIECES = ["Re:", "RE: ", "re:", "Fwd:", "FW: ", "fwd", "(fwd)", "[list]", "[Fwd: ", "]", " ", "  ", "\t",
           "Re[2]:", "[", "x", "Hello", "hello", "Café", "=?UTF-8?Q?Caf=C3=A9?=", "=?UTF-8?B?UmU6IHg=?=", ":", "a b"]
_DATES = ["Mon, 6 May 2024 10:00:00 +0000", "Mon, 6 May 2024 10:00:00 +0200", "Mon, 6 May 2024 08:00:00 +0000",
          "Tue, 7 May 2024 23:59:59 -1200", "garbage", None, "Mon, 6 May 2024 10:00:00"]


_SENDERS = ["u@r.test", "Name <u@r.test>", "name <v@r.test>", "=?UTF-8?Q?=C3=89mile?= <e@r.test>",
            "\"Doe, J\" <j@r.test>", "(c) x@r.test (X Y)", "Group: a@r.test;", "", "=?UTF-8?B?w4Q=?= z <z@r.test>",
            "Émile <f@r.test>", "<b@r.test>", "undisclosed-recipients:;", None]


def _random_corpus(seed: int, size: int) -> list[bytes]:
    """Seeded (so a failure reproduces): random subjects from reply markers, tags and encoded words;
    references to earlier and later messages, to missing ones and to themselves; duplicate ids."""
    rng = random.Random(seed)
    out = []
    for i in range(size):
        subject = "".join(rng.choices(_PIECES, k=rng.randint(0, 5)))
        refs = " ".join(f"<{rng.randint(0, size + 5)}@r>" for _ in range(rng.randint(0, 3)))
        msgid = f"<{rng.randint(0, size) if rng.random() < 0.1 else i}@r>" if rng.random() < 0.9 else None
        out.append(_msg(subject, rng.choice(_DATES), rng.choice(_SENDERS), rng.choice(_SENDERS), msgid,
                        refs or None, f"<{rng.randint(0, size)}@r>" if rng.random() < 0.2 else None))
    return out


@pytest.fixture
def random_pair(imap_server: ImapServer) -> Iterator[tuple[ImapServer, Dovecot]]:
    yield from _load(imap_server, _random_corpus(18, 120))


def test_random_subjects_and_references_like_dovecot(random_pair) -> None:
    _compare(random_pair, ["SELECT INBOX", "SORT (SUBJECT) UTF-8 ALL", "SORT (DATE) UTF-8 ALL",
                           "SORT (FROM) UTF-8 ALL", "SORT (TO) UTF-8 ALL", "SORT (DISPLAYFROM) UTF-8 ALL",
                           "SORT (DISPLAYTO) UTF-8 ALL",
                           "THREAD ORDEREDSUBJECT UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL"])
