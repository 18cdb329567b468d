"""The pure algorithms of RFC 5256: base subject extraction (§2.1), THREAD=ORDEREDSUBJECT and
THREAD=REFERENCES (§3), and the thread-list output (§4).

Nothing here reads a file or knows a session: the SORT/THREAD command hands in one ``Item`` per
message (in mailbox order) and gets ``Node`` trees back, so the algorithms are tested on their own
(tests/imap/test_thread_algorithms.py) with generated reply trees and subjects.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_SPACES = re.compile(r"[ \t\r\n]+")
# RFC 5256 §5: subj-blob = "[" *BLOBCHAR "]" *WSP; subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:", re.I)
_BLOB_ONLY = re.compile(_BLOB)
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)


def casemap(text: str) -> str:
    """The comparison form of a string: simple titlecase of each character, then decomposed, as
    Dovecot's ``uni_utf8_to_decomposed_titlecase`` (RFC 5051 i;unicode-casemap)."""
    if text.isascii():  # the usual case: titlecase is upper case, nothing decomposes
        return text.upper()
    mapped = []
    for char in text:
        title = char.title()
        mapped.append(title if len(title) == 1 else char.upper() if len(char.upper()) == 1 else char)
    return unicodedata.normalize("NFKD", "".join(mapped))


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 §2.1: the subject without reply/forward markers and list tags; and whether any
    marker was removed (the "is a reply or forward" fact that REFERENCES step 5 uses).

    ``subject`` is already decoded from RFC 2047 encoded words (step 1 is done by the caller)."""
    text = _SPACES.sub(" ", subject)
    reply = False
    while True:
        # (2) remove trailing "(fwd)" and white space
        while (trailer := _TRAILER.search(text)) is not None:
            reply = reply or trailer.group(0) not in (" ", "\t")
            text = text[:trailer.start()]
        # (3)-(5) remove leaders and leading blobs until nothing changes
        while True:
            before = text
            while True:
                if text[:1] in (" ", "\t"):
                    text = text[1:]
                    continue
                match = _REFWD.match(text)
                if match is None:
                    break
                text = text[match.end():]
                reply = True
            blob = _BLOB_ONLY.match(text)
            if blob is not None and text[blob.end():]:
                text = text[blob.end():]
            if text == before:
                break
        # (6) "[fwd: ... ]" wrapper
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


@dataclass
class Item:
    """What threading needs of one message. ``order`` is its position in the mailbox (the tie
    breaker RFC 5256 prescribes), ``date`` its sent date as a Unix time (internal date when the
    Date: header is missing or invalid, §2.2), ``subject`` its casemapped base subject."""

    number: int
    order: int
    date: float
    subject: str
    reply: bool = False
    message_id: str | None = None
    references: tuple[str, ...] = ()


@dataclass(eq=False)
class Node:
    """One thread node: a message, or a dummy (``item`` None) that stands for a missing parent."""

    item: Item | None = None
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None

    def sort_key(self) -> tuple[float, int]:
        """Siblings sort by sent date, then mailbox order; a dummy by its first child (§3 step 6)."""
        if self.item is not None:
            return (self.item.date, self.item.order)
        return self.children[0].sort_key() if self.children else (0.0, 0)

    def first_item(self) -> Item | None:
        if self.item is not None:
            return self.item
        return self.children[0].first_item() if self.children else None


def ordered_subject(items: Iterable[Item]) -> list[Node]:
    """THREAD=ORDEREDSUBJECT (RFC 5256 §3): messages sorted by base subject then sent date; each
    run of one subject is a thread whose first message is the parent of all the others."""
    threads: dict[str, Node] = {}
    for item in sorted(items, key=lambda i: (i.subject, i.date, i.order)):
        root = threads.get(item.subject)
        if root is None:
            threads[item.subject] = Node(item)
        else:
            root.children.append(Node(item, parent=root))
    return sorted(threads.values(), key=Node.sort_key)


# ------------------------------------------------------------------ THREAD=REFERENCES


def _is_ancestor(candidate: Node, node: Node | None) -> bool:
    """True when ``candidate`` is ``node`` or one of its ancestors (linking would make a loop).
    A childless candidate is nobody's ancestor: the usual case, answered without walking a chain."""
    if not candidate.children:
        return node is candidate
    while node is not None:
        if node is candidate:
            return True
        node = node.parent
    return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _build(items: Iterable[Item]) -> list[Node]:
    """Steps 1-2: containers by Message-ID, linked by References (or In-Reply-To); the roots."""
    table: dict[str, Node] = {}
    every: list[Node] = []

    def container(msgid: str) -> Node:
        node = table.get(msgid)
        if node is None:
            node = table[msgid] = Node()
            every.append(node)
        return node

    for item in items:
        # (1A) a message without a Message-ID, or with one already taken, gets a container of its own
        node = table.get(item.message_id) if item.message_id else None
        if node is None or node.item is not None:
            node = Node()
            every.append(node)
            if item.message_id and item.message_id not in table:
                table[item.message_id] = node
        node.item = item
        # (1B) link the references in order, never re-parenting and never making a loop
        previous: Node | None = None
        for ref in item.references:
            current = container(ref)
            if (previous is not None and current.parent is None and current is not previous
                    and not _is_ancestor(current, previous)):
                _link(previous, current)
            previous = current
        # (1C) the message's own References win: its parent is the last reference
        if previous is not None and (previous is node or _is_ancestor(node, previous)):
            previous = None
        if previous is not None and node.parent is not previous:
            _link(previous, node)
        elif previous is None and node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    return [n for n in every if n.parent is None]


def _post_order(roots: list[Node]) -> list[Node]:
    """Every node under ``roots``, children before their parents: no recursion, since a reply
    chain can be thousands deep (a hostile or simply long thread)."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _pruned(children: list[Node], at_root: bool) -> list[Node]:
    """Step 4 for one list of siblings whose own children are pruned already: drop empty dummies;
    promote a dummy's children, except a root dummy with several."""
    out: list[Node] = []
    for node in children:
        if node.item is not None or (at_root and len(node.children) > 1):
            out.append(node)
        else:
            out += node.children
    return out


def _prune(roots: list[Node]) -> list[Node]:
    for node in _post_order(roots):
        node.children = _pruned(node.children, False)
        for child in node.children:
            child.parent = node
    roots = _pruned(roots, True)
    for root in roots:
        root.parent = None
    return roots


def _subject_of(node: Node) -> Item | None:
    return node.first_item()


def _gather_subjects(roots: list[Node]) -> list[Node]:
    """Step 5: roots whose base subjects are equal become one thread."""
    table: dict[str, Node] = {}
    for root in roots:
        item = _subject_of(root)
        if item is None or not item.subject:
            continue
        known = table.get(item.subject)
        if (known is None or (root.item is None and known.item is not None)
                or (known.item is not None and root.item is not None and _reply(known) and not _reply(root))):
            table[item.subject] = root
    out: list[Node] = []
    removed: set[int] = set()
    for root in roots:
        if id(root) in removed:
            continue
        item = _subject_of(root)
        subject = item.subject if item is not None else ""
        known = table.get(subject) if subject else None
        if known is None or known is root:
            out.append(root)
            continue
        if known.item is None and root.item is None:
            for child in list(root.children):
                _link(known, child)
        elif known.item is None:
            _link(known, root)
        elif root.item is None:
            _adopt(out, table, subject, root, known, removed)
        elif _reply(root) and not _reply(known):
            _link(known, root)
        elif _reply(known) and not _reply(root):
            _adopt(out, table, subject, root, known, removed)
        else:
            dummy = Node()
            table[subject] = dummy
            placed = _replace(out, known, dummy)
            _link(dummy, known)
            _link(dummy, root)
            if not placed:
                out.append(dummy)
                removed.add(id(known))
    return [n for n in out if id(n) not in removed]


def _adopt(out: list[Node], table: dict[str, Node], subject: str, root: Node, known: Node,
           removed: set[int]) -> None:
    """``root`` takes the thread of ``known`` as its child and its place in the table and roots."""
    _link(root, known)
    table[subject] = root
    if not _replace(out, known, root):
        out.append(root)
        removed.add(id(known))


def _reply(node: Node) -> bool:
    return node.item is not None and node.item.reply


def _replace(roots: list[Node], old: Node, new: Node) -> bool:
    """Put ``new`` where ``old`` stands in the root list (when ``old`` was already placed)."""
    for i, node in enumerate(roots):
        if node is old:
            roots[i] = new
            return True
    return False


def _sort(roots: list[Node]) -> list[Node]:
    """Steps 6-7: children first (a dummy's date is its first child's), then the siblings."""
    for node in _post_order(roots):
        node.children.sort(key=Node.sort_key)
    return sorted(roots, key=Node.sort_key)


def references(items: Sequence[Item]) -> list[Node]:
    """THREAD=REFERENCES (RFC 5256 §3, after Jamie Zawinski's algorithm)."""
    roots = _prune(_build(items))
    roots = _gather_subjects(roots)
    return _sort(roots)


# ------------------------------------------------------------------ output (RFC 5256 §4)


def render(threads: Iterable[Node]) -> str:
    """The thread-list of a THREAD response: "(1 2 (3)(4))(5)"; a dummy shows as its children.
    Iterative, as ``_post_order``: a node with one child is followed by it, several are each
    parenthesised (RFC 5256 §4 thread-members and thread-nested)."""
    out: list[str] = []
    stack: list[Node | str] = []
    for root in reversed(list(threads)):
        stack += [")", root, "("]
    while stack:
        top = stack.pop()
        if isinstance(top, str):
            out.append(top)
            continue
        children = top.children
        if top.item is not None:
            out.append(str(top.item.number))
            if children:
                out.append(" ")
        if len(children) == 1:
            stack.append(children[0])
        else:
            for child in reversed(children):
                stack += [")", child, "("]
    return "".join(out)
