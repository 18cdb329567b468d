"""The pure RFC 5256 algorithms of ``imap.threading``: base subjects, ORDEREDSUBJECT, REFERENCES."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.imap.threading import Item, Node, base_subject, casemap, ordered_subject, references, render


def test_base_subject_removes_reply_markers_tags_and_trailers() -> None:
    assert base_subject("Re: hello") == ("hello", True)
    assert base_subject("[list] Re: [list] Fwd: Hello (fwd)") == ("Hello", True)
    assert base_subject("[Fwd: Re: hi]") == ("hi", True)
    assert base_subject("  Re:  RE:\tx  ") == ("x", True)
    assert base_subject("Re[2]: x") == ("x", True)
    assert base_subject("Fw: x") == ("x", True)
    assert base_subject("Reply to all") == ("Reply to all", False)


def test_base_subject_keeps_a_blob_that_is_the_whole_subject() -> None:
    # RFC 5256 §2.1 step 4: a leading [blob] goes only if something is left after it
    assert base_subject("[a]") == ("[a]", False)
    assert base_subject("[a] [b]") == ("[b]", False)
    assert base_subject("[tag] news") == ("news", False)


def test_base_subject_of_nothing_but_markers_is_empty() -> None:
    assert base_subject("Re: Fwd: ") == ("", True)
    assert base_subject("") == ("", False)


_PIECES = st.sampled_from(["Re:", "RE: ", "fwd:", "Fw", "re", "[", "]", "[x]", " ", "\t", "(fwd)", "[fwd:",
                           ":", "a", "b", "ü", "Subject"])


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_base_subject_is_idempotent(subject: str) -> None:
    once, _ = base_subject(subject)
    assert base_subject(once)[0] == once
    assert once == once.strip(" \t") or once.startswith("[")


@given(st.text(max_size=40))
def test_base_subject_of_any_text_is_stable(subject: str) -> None:
    once, _ = base_subject(subject)
    assert base_subject(once)[0] == once


def _item(n: int, date: float = 0, subject: str = "", msgid: str | None = None, refs: tuple[str, ...] = (),
          reply: bool = False) -> Item:
    return Item(n, n, date, subject, reply, msgid, refs)


def test_ordered_subject_groups_by_base_subject_under_the_earliest() -> None:
    items = [_item(1, 30, "B"), _item(2, 10, "A"), _item(3, 20, "A"), _item(4, 40, "B"), _item(5, 5, "A")]
    assert render(ordered_subject(items)) == "(5 (2)(3))(1 4)"


def test_references_builds_the_reply_tree() -> None:
    items = [
        _item(1, 1, "a", "<1@x>"),
        _item(2, 2, "a", "<2@x>", ("<1@x>",), reply=True),
        _item(3, 3, "a", "<3@x>", ("<1@x>", "<2@x>"), reply=True),
        _item(4, 4, "a", "<4@x>", ("<1@x>",), reply=True),
        _item(5, 5, "other", "<5@x>"),
    ]
    assert render(references(items)) == "(1 (2 3)(4))(5)"


def test_references_missing_parent_becomes_a_dummy_with_several_children() -> None:
    items = [_item(1, 1, "x", "<1@x>", ("<gone@x>",)), _item(2, 2, "y", "<2@x>", ("<gone@x>",))]
    assert render(references(items)) == "((1)(2))"


def test_references_gathers_roots_by_subject() -> None:
    items = [_item(1, 1, "same", "<1@x>"), _item(2, 2, "same", "<2@x>", reply=True),
             _item(3, 3, "same", "<3@x>")]
    # a reply under the non-reply of its subject; two non-replies become siblings under a dummy
    assert render(references(items)) == "((1 2)(3))"


def test_references_survives_loops_and_duplicate_ids() -> None:
    items = [_item(1, 1, "a", "<1@x>", ("<2@x>",)), _item(2, 2, "b", "<2@x>", ("<1@x>",)),
             _item(3, 3, "c", "<1@x>"), _item(4, 4, "d", None, ("<4@x>", "<4@x>"))]
    assert sorted(_numbers(references(items))) == [1, 2, 3, 4]


def _numbers(nodes: list[Node]) -> list[int]:
    out: list[int] = []
    for node in nodes:
        if node.item is not None:
            out.append(node.item.number)
        out += _numbers(node.children)
    return out


def _parents(nodes: list[Node], parent: int | None, out: dict[int, int | None]) -> dict[int, int | None]:
    for node in nodes:
        assert node.item is not None, "a complete reply tree needs no dummy"
        out[node.item.number] = parent
        _parents(node.children, node.item.number, out)
    return out


def _siblings_sorted(nodes: list[Node]) -> bool:
    keys = [n.sort_key() for n in nodes]
    return keys == sorted(keys) and all(_siblings_sorted(n.children) for n in nodes)


@st.composite
def reply_trees(draw: st.DrawFn) -> tuple[list[int | None], list[int]]:
    size = draw(st.integers(1, 30))
    parents: list[int | None] = [None]
    for i in range(1, size):
        parents.append(draw(st.one_of(st.none(), st.integers(0, i - 1))))
    dates = draw(st.lists(st.integers(0, 5), min_size=size, max_size=size))
    return parents, dates


@settings(max_examples=200)
@given(reply_trees(), st.randoms())
def test_references_reconstructs_random_reply_trees(tree: tuple[list[int | None], list[int]], rnd) -> None:
    parents, dates = tree

    def chain(i: int) -> tuple[str, ...]:
        out: list[str] = []
        p = parents[i]
        while p is not None:
            out.insert(0, f"<{p}@t>")
            p = parents[p]
        return tuple(out)

    order = list(range(len(parents)))
    rnd.shuffle(order)  # arrival order need not follow the tree
    items = [Item(i + 1, pos, dates[i], f"s{i}", False, f"<{i}@t>", chain(i)) for pos, i in enumerate(order)]
    threads = references(items)
    expected = {i + 1: (p + 1 if p is not None else None) for i, p in enumerate(parents)}
    assert _parents(threads, None, {}) == expected
    assert _siblings_sorted(threads)


@given(st.lists(st.tuples(st.integers(0, 8), st.lists(st.integers(0, 10), max_size=4), st.sampled_from("ab"),
                          st.booleans(), st.integers(0, 3)), max_size=25))
def test_references_shows_every_message_once_whatever_the_headers(rows) -> None:
    items = [Item(n + 1, n, date, subject, reply, f"<{mid}@t>", tuple(f"<{r}@t>" for r in refs))
             for n, (mid, refs, subject, reply, date) in enumerate(rows)]
    threads = references(items)
    assert sorted(_numbers(threads)) == list(range(1, len(rows) + 1))
    assert _siblings_sorted(threads)
    rendered = render(threads)
    assert rendered.count("(") == rendered.count(")")


def test_a_reply_chain_thousands_deep_threads_and_renders() -> None:
    depth = 5000
    items = [_item(i + 1, i, "s", f"<{i}@t>", (f"<{i - 1}@t>",) if i else ()) for i in range(depth)]
    assert render(references(items)) == "(" + " ".join(str(i + 1) for i in range(depth)) + ")"



def test_casemap_compares_case_and_accents_as_dovecot() -> None:
    # RFC 5051 i;unicode-casemap: titlecase, then NFKD
    assert casemap("Hello World") == casemap("HELLO world") == "HELLO WORLD"
    assert casemap("café") == casemap("CAFÉ") == "CAFE\u0301"
    assert casemap("ǆ") == "Dz\u030c"
