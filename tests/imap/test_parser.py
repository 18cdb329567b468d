"""The IMAP command parser on its own: RFC 3501 examples, malformed input, and hypothesis properties."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.imap.parser import (
    Append,
    Command,
    CopyMove,
    Fetch,
    InvalidName,
    ListCommand,
    Login,
    ParseError,
    Search,
    SeqRange,
    StoreCommand,
    parse_command,
)
from appliance.store import mutf7

# Command lines from RFC 3501 §6 examples (tags as in the RFC)
RFC3501_EXAMPLES = [
    b"abcd CAPABILITY",
    b"a002 NOOP",
    b"A023 LOGOUT",
    b"a001 STARTTLS",
    b"A001 AUTHENTICATE GSSAPI",
    b"a001 LOGIN SMITH SESAME",
    b"A142 SELECT INBOX",
    b"A932 EXAMINE blurdybloop",
    b"A003 CREATE owatagusiam/",
    b"A004 CREATE owatagusiam/blurdybloop",
    b"A682 LIST \"\" *",
    b"A683 DELETE blurdybloop",
    b"A684 DELETE foo",
    b"A685 DELETE foo/bar",
    b"A686 LIST \"\" foo/%",
    b"A687 DELETE foo",
    b"A683 RENAME blurdybloop sarasoop",
    b"A685 RENAME foo zowie",
    b"A002 SUBSCRIBE #news.comp.mail.mime",
    b"A002 UNSUBSCRIBE #news.comp.mail.mime",
    b"A101 LIST \"\" \"\"",
    b"A102 LIST #news.comp.mail.misc \"\"",
    b"A103 LIST /usr/staff/jones \"\"",
    b"A202 LIST ~/Mail/ %",
    b"A002 LSUB \"#news.\" \"comp.mail.*\"",
    b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)",
    b"A003 APPEND saved-messages (\\Seen) {310}\r\n" + b"x" * 310,
    b"FXXZ CHECK",
    b"A341 CLOSE",
    b"A202 EXPUNGE",
    b"A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"",
    b"A283 SEARCH TEXT \"string not in mailbox\"",
    b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\nXXXXXX",
    b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
    b"A003 STORE 2:4 +FLAGS (\\Deleted)",
    b"A003 COPY 2:4 MEETING",
    b"A999 UID FETCH 4827313:4828442 FLAGS",
]


@pytest.mark.parametrize("line", RFC3501_EXAMPLES, ids=lambda b: b.split(b" ")[1].decode())
def test_rfc3501_examples_parse(line: bytes) -> None:
    command = parse_command(line)
    assert command.tag == line.split(b" ")[0].decode()


def test_typed_results() -> None:
    login = parse_command(b'a LOGIN "joe@example.org" {4+}\r\np "w')
    assert isinstance(login, Login) and (login.username, login.password) == ("joe@example.org", 'p "w')
    fetch = parse_command(b"a UID FETCH 1:*,7 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS.NOT (X-A X-B)]<10.20>)")
    assert isinstance(fetch, Fetch) and fetch.uid
    assert fetch.sequence.ranges == (SeqRange(1, None), SeqRange(7, 7))
    body = fetch.items[1]
    assert body.peek and body.partial == (10, 20)
    assert body.section.parts == (1, 2) and body.section.text == "HEADER.FIELDS.NOT"
    assert body.section.fields == ("X-A", "X-B")
    store = parse_command(b"a STORE 1 (UNCHANGEDSINCE 12) -FLAGS.SILENT \\Seen $Junk")
    assert isinstance(store, StoreCommand)
    assert (store.mode, store.silent, store.flags, store.unchanged_since) == ("remove", True, ("\\Seen", "$Junk"), 12)
    append = parse_command(b'a APPEND "Sent Items" (\\Seen) " 7-Jul-2020 10:00:00 +0130" {3}\r\nabc')
    assert isinstance(append, Append) and append.mailbox == "Sent Items" and append.message == b"abc"
    assert append.date is not None and append.date.utcoffset() == timedelta(hours=1, minutes=30)
    search = parse_command(b"a SEARCH OR (FROM x TO y) NOT 2:3 UID 5")
    assert isinstance(search, Search)
    assert search.criteria[1][0][0] == "OR"
    copy = parse_command(b"a MOVE 1:2 &ZeVnLIqe-")
    assert isinstance(copy, CopyMove) and copy.mailbox == "日本語"
    listing = parse_command(b'a LIST (SPECIAL-USE) "" ("*" "%") RETURN (CHILDREN STATUS (MESSAGES))')
    assert isinstance(listing, ListCommand) and listing.patterns == ("*", "%")
    assert "STATUS:MESSAGES" in listing.returns and listing.selection == {"SPECIAL-USE"}


@pytest.mark.parametrize("line,reason", [
    (b"", "tag"),
    (b"+tag NOOP", "tag"),
    (b"a", "missing command"),
    (b"a FROB", "unknown command"),
    (b"a NOOP now", "extra"),
    (b"a LOGIN onlyuser", "argument"),
    (b"a FETCH 0 FLAGS", "non-zero"),
    (b"a FETCH 1:x FLAGS", "sequence"),
    (b"a FETCH 1 (FLAGS", "missing argument"),
    (b"a FETCH 1 BODY[5.HEADERS]", "section"),
    (b"a FETCH 1 BODY[]<5.0>", "non-zero"),
    (b"a FETCH 1 FOO", "fetch item"),
    (b"a STORE 1 FLAGZ (\\Seen)", "FLAGS"),
    (b"a SEARCH FROM", "argument"),
    (b"a SEARCH SINCE 31-Foo-2020", "date"),
    (b"a SEARCH BOGUS", "search key"),
    (b"a SEARCH " + b"(" * 100 + b"ALL" + b")" * 100, "deeply"),
    (b"a LOGIN {5}\r\nab", "literal shorter"),
    (b'a LOGIN "unterminated', "unterminated"),
    (b'a LOGIN "bad\\q" x', "escape"),
    (b"a UID NOOP", "not a valid command"),
    (b"a FETCH 99999999999 FLAGS", "range"),
    (b'a APPEND INBOX "31-Jan-2020 99:00:00 +0000" {1}\r\nx', "time"),
])
def test_malformed_commands_get_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_command(line)
    assert reason.lower() in exc.value.reason.lower()


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        result = parse_command(data)
    except ParseError as exc:
        assert exc.reason
        return
    assert isinstance(result, Command)


COMMAND_WORDS = [b"FETCH", b"UID FETCH", b"STORE", b"SEARCH", b"LIST", b"APPEND", b"SELECT", b"STATUS",
                 b"LOGIN", b"COPY", b"MOVE", b"UID EXPUNGE", b"ID", b"ENABLE", b"CREATE", b"AUTHENTICATE"]
TOKENS = [b"1", b"1:*", b"*", b"2,4:7", b"(", b")", b"[", b"]", b"<0.5>", b"FLAGS", b"BODY", b"BODY.PEEK",
          b"HEADER.FIELDS", b"(FROM)", b'"x"', b"{3}\r\nabc", b"{2+}\r\nab", b"\\Seen", b"NOT", b"OR", b"ALL",
          b"CHARSET", b"UTF-8", b"SINCE", b"1-Jan-2000", b"INBOX", b"&AGQ-", b"NIL", b"+FLAGS", b"RETURN",
          b"(CONDSTORE)", b"(UNCHANGEDSINCE 5)", b"(CHANGEDSINCE 3 VANISHED)", b'"17-Jul-1996 02:44:25 -0700"']


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMMAND_WORDS),
       st.lists(st.sampled_from(TOKENS), max_size=8),
       st.sampled_from([b" ", b""]))
def test_command_shaped_input_never_crashes(word: bytes, tokens: list[bytes], joiner: bytes) -> None:
    line = b"t1 " + word + b" " + (b" " if joiner else b"").join(tokens)
    try:
        assert isinstance(parse_command(line), Command)
    except ParseError as exc:
        assert exc.tag == "t1" and exc.reason


_atomish = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
                   min_size=1, max_size=20)


def _quote(value: str) -> bytes:
    return b'"' + value.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@given(user=st.text(min_size=1, max_size=40).filter(lambda s: "\r" not in s and "\n" not in s and "\0" not in s),
       password=st.binary(min_size=0, max_size=60), sync=st.booleans())
def test_login_roundtrip_any_strings(user: str, password: bytes, sync: bool) -> None:
    try:
        password_text = password.decode()
    except UnicodeDecodeError:
        return
    lit = b"{%d%s}\r\n" % (len(password), b"" if sync else b"+")
    command = parse_command(b"x LOGIN " + _quote(user) + b" " + lit + password)
    assert isinstance(command, Login)
    assert (command.username, command.password) == (user, password_text)


@given(st.lists(st.tuples(st.integers(1, 2**32 - 1), st.one_of(st.none(), st.integers(1, 2**32 - 1))),
                min_size=1, max_size=10))
def test_sequence_set_roundtrip(ranges: list[tuple[int, int | None]]) -> None:
    text = ",".join(f"{a}" if b is None else f"{a}:{b}" for a, b in ranges)
    command = parse_command(f"t FETCH {text} FLAGS".encode())
    assert isinstance(command, Fetch)
    assert command.sequence.ranges == tuple(SeqRange(a, a if b is None else b) for a, b in ranges)


@given(st.lists(st.one_of(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]),
                          _atomish.filter(lambda s: not s.startswith("\\"))), max_size=6))
def test_store_flag_list_roundtrip(flags: list[str]) -> None:
    command = parse_command(f"t STORE 1 +FLAGS ({' '.join(flags)})".encode())
    assert isinstance(command, StoreCommand) and list(command.flags) == flags


@given(st.text(min_size=1, max_size=30).filter(lambda s: all(c not in s for c in "\r\n\0")))
def test_mutf7_roundtrip(name: str) -> None:
    encoded = mutf7.encode(name)
    assert encoded.isascii()
    assert mutf7.decode(encoded) == name


@given(st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and all(0x20 <= ord(c) for c in s)))
def test_mailbox_names_roundtrip_through_select(name: str) -> None:
    wire = mutf7.encode(name).encode()
    command = parse_command(b"t SELECT {%d}\r\n%s" % (len(wire), wire))
    assert command.mailbox == name


@pytest.mark.parametrize("wire", [b"&Jjo", b"&AGE-", b"bad&name", b"!#$&'+,-.0123456789:;<=>?@^_`|[}"])
def test_names_not_in_modified_utf7_parse_as_invalid_names(wire: bytes) -> None:
    """A well-formed command naming a mailbox that cannot exist: the session answers NO, not BAD."""
    command = parse_command(b"t SELECT " + wire)
    assert isinstance(command.mailbox, InvalidName) and command.mailbox == wire.decode()
    listing = parse_command(b't LIST "" "' + wire + b'"')
    assert isinstance(listing, ListCommand) and listing.patterns == (wire.decode(),)
