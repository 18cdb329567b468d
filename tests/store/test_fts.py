"""The full-text index of an account (appliance.store.fts): what it extracts, that it stays complete across
crashes, expunges and version changes, and that a hostile message cannot blow it up."""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.store import MailStore
from appliance.store.fts import FILE_NAME, FTS_VERSION, FtsIndex, FtsSettings, extract

USER = "alice@example.org"


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    store = MailStore(tmp_path / "mail", fts=FtsSettings(autoindex=True))
    yield store
    store.close()


def _mime(*parts: bytes, subject: bytes = b"test") -> bytes:
    body = b"".join(b"--b\r\n" + p + b"\r\n" for p in parts)
    return (b"Subject: " + subject + b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            + body + b"--b--\r\n")


def test_parts_are_decoded_as_a_reader_sees_them() -> None:
    latin_qp = (b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable"
                b"\r\n\r\nCaf=E9 cr=E8me")
    koi8_b64 = (b"Content-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + base64.b64encode("Привет мир".encode("koi8-r")))
    html = (b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><style>p {color: red}</style><p>Hello"
            b" <b>wor</b>ld &amp; more</p><script>var hidden = 1;</script></html>")
    unknown = b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nstill readable"
    pdf = (b"Content-Type: application/pdf; name=\"Quarterly Report.pdf\"\r\nContent-Disposition: attachment;"
           b" filename=\"Quarterly Report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode(b"%PDF-1.4 binarysecret"))
    text = extract(_mime(latin_qp, koi8_b64, html, unknown, pdf, subject=b"=?utf-8?q?R=C3=A9union?="))
    assert "café crème" in text.body
    assert "привет мир" in text.body
    assert "hello world & more" in text.body
    assert "color" not in text.body and "hidden" not in text.body and "<b>" not in text.body
    assert "still readable" in text.body
    assert "binarysecret" not in text.body and "binarysecret" not in text.headers
    assert "quarterly report.pdf" in text.headers
    assert "subject: réunion" in text.headers
    assert not text.truncated


def test_garbage_is_extracted_without_an_error() -> None:
    for data in (b"", b"\xff\xfe\x00", b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
                 b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64", b"Subject: =?bogus?x?zz?=\r\n\r\nx"):
        extract(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600) | st.lists(st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"\r\n", b"--b\r\n", b"--b--\r\n",
    b"Subject: =?utf-8?b?w6k=?=\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n", b"=E9=\r\n",
    b"Content-Type: text/html; charset=koi8-r\r\n", b"<p>x&amp;</p>", b"\xff\x00", b"text ",
    b"Content-Disposition: attachment; filename*=utf-8''%C3%A9.txt\r\n"]), max_size=30).map(b"".join),
       st.integers(0, 300))
@example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\naaaa\r\n--b\r\n\r\nbbbb\r\n--b--\r\n", 46)
def test_any_input_extracts_and_a_cap_only_cuts(data: bytes, cap: int) -> None:
    """Never an error, whatever the bytes; a capped text that says it is complete is the whole text."""
    full = extract(data)
    capped = extract(data, cap)
    assert len((capped.headers + capped.body).encode("utf-8", "surrogatepass")) <= cap
    if not capped.truncated:
        assert capped == full


def test_a_cap_keeps_the_beginning_and_says_it_cut() -> None:
    data = b"Subject: s\r\n\r\n" + b"word " * 1000
    full = extract(data)
    capped = extract(data, 100)
    assert capped.truncated and len((capped.headers + capped.body).encode()) <= 100
    assert full.body.startswith(capped.body)
    assert extract(data, 10_000) == full


def _index(store: MailStore, max_bytes: int = 1 << 20) -> FtsIndex:
    return FtsIndex(store.account(USER).path, max_bytes)


def test_the_index_finds_substrings_case_insensitively(store: MailStore) -> None:
    store.deliver(USER, b"Subject: one\r\n\r\nThe Quick brown fox\r\n")
    store.deliver(USER, b"Subject: two\r\n\r\nlazy dog\r\n")
    account = store.account(USER)
    index = _index(store)
    assert index.catch_up(account) == 2
    files = {info.uid: info.file for info in account.messages("INBOX")}
    assert index.matching("ick bro", body_only=True) == {files[1]}
    assert index.matching("subject: t", body_only=True) == set()
    assert index.matching("subject: t", body_only=False) == {files[2]}
    assert index.matching('"q', body_only=False) == set()
    assert index.unsure(files.values()) == set()


def test_messages_delivered_while_it_was_not_running_are_indexed_at_the_next_open(store: MailStore) -> None:
    """A crash between a delivery and its indexing loses nothing: the next catch-up finds the message."""
    store.deliver(USER, b"Subject: a\r\n\r\nalpha\r\n")
    account = store.account(USER)
    index = _index(store)
    index.catch_up(account)
    index.close()
    store.deliver(USER, b"Subject: b\r\n\r\nbravo\r\n")  # no index open: as after a crash
    reopened = _index(store)
    files = [info.file for info in account.messages("INBOX")]
    assert reopened.unsure(files) == {files[1]}
    assert reopened.catch_up(account, files) == 1
    assert reopened.matching("bravo", body_only=True) == {files[1]}


def test_expunged_messages_leave_the_index(store: MailStore) -> None:
    for word in (b"alpha", b"bravo"):
        store.deliver(USER, b"Subject: x\r\n\r\n" + word + b"\r\n")
    account = store.account(USER)
    index = _index(store)
    index.catch_up(account)
    account.store_flags("INBOX", [1], ["\\Deleted"], "add")
    account.expunge("INBOX")
    index.catch_up(account)
    assert index.matching("alpha", body_only=True) == set()
    assert index.stats()[0] == 1


def test_an_index_of_another_version_or_a_broken_one_is_rebuilt(store: MailStore) -> None:
    store.deliver(USER, b"Subject: x\r\n\r\ncharlie\r\n")
    account = store.account(USER)
    index = _index(store)
    index.catch_up(account)
    index.close()
    path = account.path / FILE_NAME
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {FTS_VERSION + 1}")
    index = _index(store)
    assert index.stats()[0] == 0  # started anew, then caught up
    assert index.catch_up(account) == 1
    index.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not an SQLite database" * 100)
    index = _index(store)
    assert index.catch_up(account) == 1
    assert len(index.matching("charlie", body_only=True)) == 1


def test_a_hostile_message_is_indexed_only_up_to_the_cap(store: MailStore) -> None:
    """A 3 MB body with the needle at its end: the index keeps 8 KiB of it and says so; the message stays
    findable, by the scan of the ones the index cannot answer for."""
    data = b"Subject: big\r\n\r\n" + b"filler text " * 250_000 + b"needle at the end\r\n"
    store.deliver(USER, data)
    account = store.account(USER)
    index = _index(store, max_bytes=8192)
    index.catch_up(account)
    files = [info.file for info in account.messages("INBOX")]
    assert index.stats() == (1, 1)
    assert index.matching("needle at", body_only=True) == set()
    assert index.unsure(files) == set(files)
    index.close()
    assert (account.path / FILE_NAME).stat().st_size < 1_000_000


def test_deliveries_are_indexed_in_the_background(store: MailStore) -> None:
    """SMTP's deliver_async and deliver() both leave the index built, without a search to trigger it."""
    import asyncio

    async def deliver_some() -> None:
        await asyncio.gather(*(store.deliver_async(USER, b"Subject: s\r\n\r\nmessage %d\r\n" % i) for i in range(5)))

    asyncio.run(deliver_some())
    store.deliver(USER, b"Subject: s\r\n\r\nthe sixth\r\n")
    assert store.fts_idle(30)
    index = _index(store)
    assert index.stats()[0] == 6
    assert len(index.matching("sixth", body_only=True)) == 1


DELIVER_LOOP = """
import sys
from pathlib import Path
from appliance.store import MailStore
from appliance.store.fts import FtsSettings
store = MailStore(Path(sys.argv[1]), fts=FtsSettings(autoindex=True))
i = 0
while True:
    store.deliver("alice@example.org", b"Subject: p\\r\\n\\r\\nunique token%dx\\r\\n" % i)
    print(i, flush=True)
    i += 1
"""


def test_kill_9_while_indexing_loses_no_entry(tmp_path: Path) -> None:
    """The delivering process (its background indexer writing fts.sqlite) is killed; the next catch-up
    indexes every message the store lists, and each is found by its own words."""
    root = tmp_path / "mail"
    index_file = root / "example.org" / "alice" / FILE_NAME
    proc = subprocess.Popen([sys.executable, "-c", DELIVER_LOOP, str(root)], stdout=subprocess.PIPE)
    acknowledged: list[int] = []
    try:
        assert proc.stdout is not None
        while len(acknowledged) < 60 or not index_file.exists():
            acknowledged.append(int(proc.stdout.readline()))
        while len(acknowledged) < 120:  # the indexer is at work by now (it started after the first delivery)
            acknowledged.append(int(proc.stdout.readline()))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = MailStore(root, fts=FtsSettings(enabled=False))
    try:
        account = store.account(USER)
        index = FtsIndex(account.path)
        index.catch_up(account)
        infos = account.messages("INBOX")
        assert len(infos) >= len(acknowledged)
        assert index.unsure(info.file for info in infos) == set()
        assert index.stats()[0] == len(infos)
        for i in acknowledged:
            assert len(index.matching(f"token{i}x", body_only=True)) == 1, i
    finally:
        store.close()
