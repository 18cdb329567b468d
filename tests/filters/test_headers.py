"""Editing a message's header section (appliance/filters/headers.py): pure, on bytes, with hypothesis for what
must hold for any message and any value a daemon could send."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from appliance.filters.headers import (
    HeaderError,
    apply_changes,
    encode_field,
    parse,
    remove_fields,
    rewrite_subject,
)
from appliance.filters.scanner import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    ReplaceBody,
)
from appliance.message.lines import has_bare_cr_or_lf

MESSAGE = (b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"X-Spam-Flag: YES\r\n"
           b"Subject: hello\r\n"
           b"x-spam-status: Yes, score=99.0\r\n  tests=FORGED\r\n"
           b"From: a@x.test\r\n"
           b"\r\n"
           b"X-Spam-Flag: YES in the body stays\r\n")


@dataclass
class _Transaction:
    mail_from: str | None = "a@x.test"
    rcpt_tos: list[str] = field(default_factory=lambda: ["bob@y.test", "carol@y.test"])
    accepted: list[tuple[str, tuple[str, ...]]] = field(
        default_factory=lambda: [("bob@y.test", ("bob@y.test",)), ("carol@y.test", ("carol@z.test",))])
    content: bytes = MESSAGE
    meta: dict[str, object] = field(default_factory=dict)


def test_remove_takes_every_occurrence_with_its_folds_and_leaves_the_body() -> None:
    out = remove_fields(MESSAGE, ["X-Spam-Flag", "X-SPAM-STATUS"])
    assert out == (b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   b"Subject: hello\r\nFrom: a@x.test\r\n\r\nX-Spam-Flag: YES in the body stays\r\n")


def test_remove_of_absent_fields_returns_the_message_unchanged() -> None:
    assert remove_fields(MESSAGE, ["X-Nothing"]) is MESSAGE


def test_milter_changes_in_order_on_headers_and_envelope() -> None:
    transaction = _Transaction()
    refused = apply_changes(transaction, [
        AddHeader("X-Added", "at the end"),
        InsertHeader(0, "X-First", "on top"),
        ChangeHeader("Subject", 1, "changed"),
        ChangeHeader("X-Spam-Flag", 1, ""),
        ChangeSender("<bounce@x.test>"),
        AddRecipient("<dave@y.test>"),
        DeleteRecipient("<BOB@y.test>"),
    ])
    assert refused == []
    message = parse(transaction.content)
    assert message.names() == ["X-First", "Received", "Subject", "x-spam-status", "From", "X-Added"]
    assert message.values("subject") == ["changed"]
    assert message.body == b"X-Spam-Flag: YES in the body stays\r\n"
    assert transaction.mail_from == "bounce@x.test"
    assert transaction.accepted == [("carol@y.test", ("carol@z.test",)), ("dave@y.test", ("dave@y.test",))]
    assert transaction.rcpt_tos == ["carol@y.test", "dave@y.test"]


def test_change_past_the_last_occurrence_adds_and_an_empty_sender_is_the_null_path() -> None:
    transaction = _Transaction()
    assert apply_changes(transaction, [ChangeHeader("X-New", 3, "v"), ChangeSender("")]) == []
    assert parse(transaction.content).names()[-1] == "X-New"
    assert transaction.mail_from == "<>"


def test_bad_changes_are_refused_one_by_one_and_the_good_ones_made() -> None:
    transaction = _Transaction()
    refused = apply_changes(transaction, [AddHeader("Bad Name", "x"), AddRecipient("not an address"),
                                          AddHeader("X-Good", "y")])
    assert len(refused) == 2 and "Bad Name" in refused[0]
    assert parse(transaction.content).values("X-Good") == ["y"]
    assert len(transaction.accepted) == 2


def test_replace_body_normalises_line_endings() -> None:
    transaction = _Transaction()
    apply_changes(transaction, [ReplaceBody(b"new\nbody\rend")])
    assert transaction.content.endswith(b"From: a@x.test\r\n\r\nnew\r\nbody\r\nend\r\n")


def test_subject_rewritten_encoded_when_not_ascii_and_added_when_missing() -> None:
    out = rewrite_subject(MESSAGE, "[SPAM] hello")
    assert parse(out).values("Subject") == ["[SPAM] hello"]
    out = rewrite_subject(b"From: a@x.test\r\n\r\nbody\r\n", "Grüße")
    assert parse(out).values("Subject") == ["=?utf-8?b?R3LDvMOfZQ==?="]
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_a_field_added_to_a_message_without_a_blank_line_keeps_the_rest_out_of_the_header() -> None:
    message = parse(b"From: a@x.test\r\nthis is no field\r\n")
    message.add("X-Tag", "1")
    assert bytes(message) == b"From: a@x.test\r\nX-Tag: 1\r\n\r\nthis is no field\r\n"


def test_a_value_with_line_breaks_is_folded_into_one_field() -> None:
    raw = encode_field("X-Test", "one\r\n\r\nBcc: evil@x.test\nthree")
    assert raw == b"X-Test: one\r\n\tBcc: evil@x.test\r\n\tthree\r\n"
    assert parse(raw + b"\r\n").names() == ["X-Test"]


def test_a_name_that_is_no_field_name_is_refused() -> None:
    for name in ("", "Bad Name", "X:Y", "Ünï", "X\r\nBcc"):
        try:
            encode_field(name, "v")
        except HeaderError:
            continue
        raise AssertionError(f"{name!r} was accepted")


# -- properties

_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
_values = st.text(st.characters(codec="utf-8"), max_size=60) | st.text("\r\n \t:abc", max_size=20)
_fields = st.lists(st.tuples(_names, st.text("abc xyz\t", max_size=30)), max_size=8)
_bodies = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n"))


def _message(fields: list[tuple[str, str]], body: bytes) -> bytes:
    return b"".join(encode_field(name, value) for name, value in fields) + b"\r\n" + body


@given(_fields, _bodies, st.lists(_names, max_size=3))
def test_removing_fields_leaves_none_of_them_and_the_body_as_it_was(fields, body, names) -> None:
    data = _message(fields, body)
    message = parse(remove_fields(data, names))
    lowered = {n.lower() for n in names}
    assert not [n for n in message.names() if n.lower() in lowered]
    assert message.body == body
    kept = [n for n, _ in fields if n.lower() not in lowered]
    assert message.names() == kept


@given(_fields, _bodies, _names, _values, st.integers(-2, 12))
def test_no_value_can_end_the_header_section_or_add_a_field(fields, body, name, value, index) -> None:
    data = _message(fields, body)
    message = parse(data)
    message.insert(index, name, value)
    out = bytes(message)
    assert not has_bare_cr_or_lf(out)
    again = parse(out)
    assert len(again.names()) == len(fields) + 1
    assert again.body == body


@given(_fields, _bodies, st.lists(st.sampled_from([
    AddHeader("X-A", "1"), InsertHeader(1, "X-B", "2\n3"), ChangeHeader("X-A", 1, ""),
    ChangeHeader("Subject", 2, "s"), ChangeSender("x@y.test"), AddRecipient("new@y.test")]), max_size=6))
def test_header_changes_never_touch_the_body(fields, body, changes) -> None:
    transaction = _Transaction(content=_message(fields, body))
    apply_changes(transaction, changes)
    assert parse(transaction.content).body == body
    assert not has_bare_cr_or_lf(transaction.content)


@given(st.binary(max_size=300))
def test_any_bytes_parse_back_to_themselves(data) -> None:
    assert bytes(parse(data)) == data
