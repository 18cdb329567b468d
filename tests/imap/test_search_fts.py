"""SEARCH BODY/TEXT from the full-text index: the same answers as the scan on every input, and over IMAP."""

from __future__ import annotations

import base64
import itertools
import quopri
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.imap.message import Message, read_message
from appliance.imap.search import Candidate, FtsAnswer, fts_answers, matches, text_keys
from appliance.store import MailStore
from appliance.store.fts import FILE_NAME, FtsIndex, FtsSettings

USER = "alice@example.org"
# Letters whose case folding is not one-to-one (ß, İ, ı, ſ), markup, NUL, encoded-word and QP specials.
ALPHABET = list("abcxyzABCXYZ  ßSsſİiıIÉéЖж€😀<>&;\"=?_\x00\t\n.")
CHARSETS = ["utf-8", "iso-8859-1", "iso-8859-15", "koi8-r", "windows-1252", "shift_jis", "x-no-such-charset"]

WORDS = ["straße", "STRASSE", "İstanbul", "café", "Жук", "price €5", "a&amp;b", "<b>bold</b>", "=?utf-8?", "ok"]
# Words that recur across messages (so that needles match), with random runs of the alphabet between them.
texts = st.lists(st.sampled_from(WORDS) | st.text(alphabet=st.sampled_from(ALPHABET), max_size=6),
                 max_size=8).map(" ".join)


@st.composite
def parts(draw: st.DrawFn) -> tuple[bytes, str]:
    """One MIME part (its bytes) and the text a reader sees in it."""
    text = draw(texts)
    kind = draw(st.sampled_from(["plain", "html", "octet-stream"]))
    charset = draw(st.sampled_from(CHARSETS))
    encoding = draw(st.sampled_from(["8bit", "quoted-printable", "base64"]))
    try:
        raw = text.encode(charset, "replace")
    except LookupError:
        raw = text.encode("utf-8")
    if encoding == "base64":
        body = base64.encodebytes(raw)
    elif encoding == "quoted-printable":
        body = quopri.encodestring(raw)
    else:
        body = raw.replace(b"\r", b"").replace(b"\n", b"\r\n")
    ctype = f"application/{kind}" if kind == "octet-stream" else f"text/{kind}; charset={charset}"
    name = f'; name="{draw(st.sampled_from(["report.pdf", "Notes ß.txt", "x"]))}"' if draw(st.booleans()) else ""
    head = f"Content-Type: {ctype}{name}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n".encode()
    return head + body, text


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    subject = draw(texts).replace("\n", " ").replace("\x00", " ")
    if draw(st.booleans()):
        subject = "=?utf-8?b?" + base64.b64encode(subject.encode()).decode() + "?="
    top = f"Subject: {subject}\r\nFrom: a@example.org\r\nMIME-Version: 1.0\r\n".encode()
    drawn = draw(st.lists(parts(), min_size=1, max_size=3))
    if len(drawn) == 1 and draw(st.booleans()):
        return top + drawn[0][0], [drawn[0][1], subject]
    body = b"".join(b"--sep\r\n" + p + b"\r\n" for p, _ in drawn) + b"--sep--\r\n"
    return top + b"Content-Type: multipart/mixed; boundary=sep\r\n\r\n" + body, [t for _, t in drawn] + [subject]


@st.composite
def needles(draw: st.DrawFn, seen: list[str]) -> bytes:
    """A substring of a text the messages hold (case changed at random), or any string."""
    source = draw(st.sampled_from(seen)) if seen else ""
    if source and draw(st.integers(0, 3)):
        start = draw(st.integers(0, len(source) - 1))
        piece = source[start : start + draw(st.sampled_from([1, 2, 3, 4, 6, 9, 14]))]
        piece = "".join(ch.upper() if draw(st.booleans()) else ch for ch in piece)
    else:
        piece = draw(texts)
    return piece.encode("utf-8")


def _criteria(draw: st.DrawFn, seen: list[str]) -> tuple:
    first = (draw(st.sampled_from(["BODY", "TEXT"])), draw(needles(seen)))
    shape = draw(st.sampled_from(["plain", "not", "or"]))
    if shape == "not":
        return ("AND", [("NOT", first)])
    if shape == "or":
        return ("AND", [("OR", first, (draw(st.sampled_from(["BODY", "TEXT"])), draw(needles(seen))))])
    return ("AND", [first])


def _answer(criteria: tuple, infos: list, answers: dict[int, FtsAnswer] | None, loads: list[str]) -> list[int]:
    def loader(path: str):
        def load() -> Message:
            loads.append(path)
            return Message(read_message(path))
        return load

    largest = infos[-1].uid if infos else 0
    return [info.uid for seq, info in enumerate(infos, start=1)
            if matches(criteria, Candidate(seq, info, False, len(infos), largest, loader(info.file), answers=answers),
                       "utf-8")]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MailStore, dict[int, FtsIndex]]]:
    """One account for every example (each gets a folder of its own), with an index per size cap."""
    store = MailStore(tmp_path_factory.mktemp("fts-property"))
    account = store.account(USER)
    yield store, {cap: FtsIndex(account.path, cap) for cap in (40, 1 << 20)}
    store.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_index_answers_as_the_scan_does(shared: tuple[MailStore, dict[int, FtsIndex]],
                                            data: st.DataObject) -> None:
    store, indexes = shared
    drawn = data.draw(st.lists(messages(), min_size=1, max_size=4), label="messages")
    seen = [t for _, ts in drawn for t in ts if t]
    criteria = data.draw(st.composite(lambda draw: _criteria(draw, seen))(), label="criteria")
    index = indexes[data.draw(st.sampled_from(sorted(indexes)), label="max_bytes")]
    account = store.account(USER)
    folder = f"f{next(_FOLDERS)}"
    account.create_folder(folder)
    for raw, _ in drawn:
        store.deliver(USER, raw, folder=folder)
    infos = account.messages(folder)
    scanned = _answer(criteria, infos, None, [])
    answers = fts_answers(criteria, index, account, infos, "utf-8")
    loads: list[str] = []
    assert _answer(criteria, infos, answers, loads) == scanned
    if all(id(node) in answers for node in text_keys(criteria)):
        unsure = next(iter(answers.values())).unsure
        assert set(loads) <= unsure  # only the messages the index cannot answer for were read


_FOLDERS = itertools.count()


def _imap_mime(body: bytes, headers: bytes) -> bytes:
    return b"From: bob@example.org\r\nSubject: hello\r\nMIME-Version: 1.0\r\n" + headers + b"\r\n" + body


def test_search_body_over_imap_uses_the_index_and_answers_as_the_scan(imap_server) -> None:
    deliver = imap_server.deliver
    deliver(_imap_mime(b"Caf=E9 au lait, order #4711=\r\n confirmed\r\n",
                       b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable"
                       b"\r\n"))
    deliver(_imap_mime(base64.encodebytes(b"<p>Invoice <b>attached</b></p>"),
                       b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"))
    deliver(_imap_mime(b"nothing to see\r\n", b"Content-Type: text/plain\r\n"))
    queries = [("BODY", "order #4711 confirmed"), ("BODY", "INVOICE ATTACHED"), ("TEXT", "hello"),
               ("BODY", "hello"), ("BODY", "to"), ("BODY", "<b>"), ("TEXT", "see")]

    def run() -> list[bytes]:
        conn = imap_server.imaplib()
        try:
            conn.select("INBOX")
            out = []
            for key, value in queries:
                typ, found = conn.uid("SEARCH", key, f'"{value}"')
                assert typ == "OK"
                out.append(found[0])
            typ, found = conn.uid("SEARCH", "NOT", "BODY", '"lait"', "OR", "BODY", '"see"', "BODY", '"voice"')
            out.append(found[0])
            return out
        finally:
            conn.logout()

    indexed = run()
    assert indexed == [b"1", b"2", b"1 2 3", b"", b"3", b"", b"3", b"2 3"]
    account_path = imap_server.store.account(USER).path
    assert (account_path / FILE_NAME).exists()
    assert FtsIndex(account_path).stats()[0] == 3
    imap_server.store.fts = FtsSettings(enabled=False)
    assert run() == indexed


def test_a_backlog_is_scanned_now_and_indexed_in_the_background(tmp_path, monkeypatch) -> None:
    """A mailbox whose index is gone is not indexed inline by the first search (that would take a while for a
    big one): the search reads the messages, right all the same, and the background indexer builds the index."""
    from appliance.imap import search as searchmod
    from appliance.store import fts

    monkeypatch.setattr(fts, "INLINE_INDEX", 2)
    store = MailStore(tmp_path / "mail", fts=FtsSettings(enabled=False))  # delivered with no indexing
    try:
        for word in (b"alpha", b"bravo", b"alphabet"):
            store.deliver(USER, b"Subject: s\r\n\r\n" + word + b"\r\n")
        account = store.account(USER)
        infos = account.messages("INBOX")
        criteria = ("AND", [("BODY", b"ALPHA")])
        answers = searchmod.index_answers(criteria, account, FtsSettings(), infos, "utf-8")
        assert next(iter(answers.values())).unsure == {info.file for info in infos}
        loads: list[str] = []
        assert _answer(criteria, infos, answers, loads) == [1, 3]
        assert len(loads) == 3
        assert store.fts_idle(30)
        answers = searchmod.index_answers(criteria, account, FtsSettings(), infos, "utf-8")
        loads.clear()
        assert _answer(criteria, infos, answers, loads) == [1, 3] and loads == []
    finally:
        store.close()
