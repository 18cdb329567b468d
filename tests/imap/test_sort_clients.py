"""SORT, THREAD and ESORT through real clients (imaplib, imapclient), and their parser."""

from __future__ import annotations

import imapclient
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.imap.parser import ParseError, Sort, Thread, parse_command
from tests.imap.conftest import PASSWORD, ImapServer, RawClient


def _deliver(server: ImapServer) -> None:
    """Four messages: a thread of three (one reply arriving before its parent) and one other."""
    for subject, date, msgid, refs, sender in (
        ("Re: plan", "Tue, 2 Jan 2024 10:00:00 +0000", "<b@t>", "<a@t>", "Carl <carl@c.test>"),
        ("plan", "Mon, 1 Jan 2024 10:00:00 +0000", "<a@t>", None, "anna@a.test"),
        ("lunch", "Wed, 3 Jan 2024 10:00:00 +0000", "<c@t>", None, "Bert <zz@b.test>"),
        ("Re: Re: plan", "Thu, 4 Jan 2024 10:00:00 +0000", "<d@t>", "<a@t> <b@t>", "dora@d.test"),
    ):
        header = f"From: {sender}\r\nTo: alice@example.org\r\nSubject: {subject}\r\nDate: {date}\r\n"
        header += f"Message-ID: {msgid}\r\n" + (f"References: {refs}\r\n" if refs else "")
        server.deliver((header + "\r\nbody\r\n").encode())


def test_imaplib_sort_and_thread(imap_server: ImapServer) -> None:
    _deliver(imap_server)
    conn = imap_server.imaplib()
    try:
        assert b"THREAD=REFERENCES" in conn.capability()[1][0]
        conn.select("INBOX")
        assert conn.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"2 1 3 4"])
        assert conn.sort("(SUBJECT REVERSE DATE)", "US-ASCII", "ALL") == ("OK", [b"3 4 1 2"])
        assert conn.sort("(DISPLAYFROM)", "UTF-8", "ALL") == ("OK", [b"2 3 1 4"])
        assert conn.sort("(FROM)", "UTF-8", "NOT", "SUBJECT", "lunch") == ("OK", [b"2 1 4"])
        assert conn.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(2 1 4)(3)"])
        assert conn.thread("ORDEREDSUBJECT", "UTF-8", "ALL") == ("OK", [b"(2 (1)(4))(3)"])
        conn.store("2", "+FLAGS", "\\Deleted")
        conn.expunge()
        # the lost parent is a dummy with one child: pruned, its child takes its place
        assert conn.uid("THREAD", "REFERENCES", "UTF-8", "ALL") == ("OK", [b"(1 4)(3)"])
        assert conn.uid("SORT", "(REVERSE DATE)", "UTF-8", "ALL") == ("OK", [b"4 3 1"])
        # a message delivered meanwhile is in the next answer, once the session has been told of it
        imap_server.deliver(b"From: eve@e.test\r\nSubject: plan\r\nDate: Fri, 5 Jan 2024 10:00:00 +0000\r\n\r\nx\r\n")
        conn.noop()
        assert conn.uid("SORT", "(REVERSE DATE)", "UTF-8", "ALL") == ("OK", [b"5 4 3 1"])
        # the reply 1 (now a root) joins the new non-reply of its subject
        assert conn.uid("THREAD", "REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(5 1 4)"])
        assert conn.uid("SORT", "(REVERSE DATE)", "X-NONE", "ALL")[0] == "NO"
    finally:
        conn.logout()


def test_imapclient_sort_thread(imap_server: ImapServer) -> None:
    _deliver(imap_server)
    client = imapclient.IMAPClient(imap_server.host, port=imap_server.port, ssl=False, timeout=30)
    try:
        client.login("alice@example.org", PASSWORD)
        client.select_folder("INBOX")
        assert client.sort(["REVERSE SIZE", "ARRIVAL"]) == [4, 1, 3, 2]  # UIDs (imapclient's default)
        assert client.thread("REFERENCES") == ((2, 1, 4), (3,))
        assert client.thread("REFERENCES", ["FROM", "dora"]) == ((4,),)
    finally:
        client.logout()


def test_esort_and_errors(raw: RawClient, imap_server: ImapServer) -> None:
    _deliver(imap_server)
    raw.login()
    assert raw.command("a", "SORT (DATE) UTF-8 ALL")[-1].startswith(b"a BAD No mailbox selected")
    raw.command("s", "SELECT INBOX")
    assert raw.command("b", "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL") == [
        b'* ESEARCH (TAG "b") MIN 2 MAX 4 ALL 2,1,3:4 COUNT 4\r\n', b"b OK Sort completed.\r\n"]
    assert raw.command("c", "UID SORT RETURN () (SUBJECT) UTF-8 ALL")[0] == b'* ESEARCH (TAG "c") UID ALL 3,1:2,4\r\n'
    assert raw.command("d", "SORT (DATE) KOI9-X ALL")[-1].startswith(b"d NO [BADCHARSET]")
    assert raw.command("e", "THREAD REFS UTF-8 ALL")[-1] == b"e BAD unknown thread algorithm REFS\r\n"
    assert raw.command("f", "SORT (DATE) UTF-8 SUBJECT nothing")[0] == b"* SORT\r\n"
    # RFC 7162 §3.1.5: a MODSEQ criterion adds the highest mod-sequence of the messages found
    raw.command("g", "STORE 3 +FLAGS (\\Flagged)")
    sorted_by_modseq = raw.command("h", "SORT (DATE) UTF-8 MODSEQ 1")
    assert sorted_by_modseq[0].startswith(b"* OK [HIGHESTMODSEQ ")  # the first CONDSTORE-enabling command
    assert sorted_by_modseq[1].startswith(b"* SORT 2 1 3 4 (MODSEQ "), sorted_by_modseq
    assert raw.command("i", "SORT RETURN (COUNT) (DATE) UTF-8 MODSEQ 1")[0].startswith(
        b'* ESEARCH (TAG "i") COUNT 4 MODSEQ ')


@pytest.mark.parametrize("line, reason", [
    (b"t SORT DATE UTF-8 ALL", "expected sort criteria"),
    (b"t SORT () UTF-8 ALL", "expected sort key"),
    (b"t SORT (REVERSE) UTF-8 ALL", "unknown sort key REVERSE"),
    (b"t SORT (WEIGHT) UTF-8 ALL", "unknown sort key WEIGHT"),
    (b"t SORT (DATE) UTF-8", "missing search criteria"),
    (b"t SORT RETURN (SAVE) (DATE) UTF-8 ALL", "unknown SORT return option SAVE"),
    (b"t THREAD REFERENCES", "missing argument"),
    (b"t UID THREAD X UTF-8 ALL", "unknown thread algorithm X"),
])
def test_malformed_sort_and_thread_are_refused_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_command(line)
    assert caught.value.reason == reason and caught.value.tag == "t"


def test_sort_and_thread_parse() -> None:
    sort = parse_command(b"t UID SORT RETURN (MIN COUNT) (REVERSE date Subject) utf-8 FROM bob 1:3")
    assert isinstance(sort, Sort) and sort.uid and sort.returns == ("MIN", "COUNT")
    assert sort.keys == (("DATE", True), ("SUBJECT", False)) and sort.charset == "utf-8"
    assert sort.criteria[0] == "AND" and sort.criteria[1][0] == ("FROM", b"bob")
    thread = parse_command(b"t THREAD orderedsubject US-ASCII ALL")
    assert isinstance(thread, Thread) and thread.algorithm == "ORDEREDSUBJECT" and not thread.uid


@given(st.binary(max_size=60))
def test_sort_and_thread_parser_answers_any_bytes_with_a_command_or_a_reason(tail: bytes) -> None:
    for head in (b"t SORT ", b"t UID THREAD ", b"t SORT RETURN ("):
        try:
            parse_command(head + tail)
        except ParseError as exc:
            assert exc.reason and "\n" not in exc.reason
