"""SORT, UID SORT, THREAD and UID THREAD (RFC 5256), with ESORT results (RFC 5267 §3).

The messages that match the search criteria are found as SEARCH finds them (``imap.search``);
their keys come from ``imap.sortkeys`` (cached per message file) and the thread algorithms from
``imap.threading``. Results name sequence numbers, or UIDs for the UID forms.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING

from appliance.imap import search as searchmod
from appliance.imap import sortkeys, threading
from appliance.imap.commands.registry import command
from appliance.imap.commands.search import matching
from appliance.imap.parser import Sort, Thread
from appliance.imap.response import compress
from appliance.imap.state import SELECTED
from appliance.store import MessageInfo

if TYPE_CHECKING:
    from appliance.imap.session import Session

YIELD_EVERY = 500  # messages between yields to the event loop while keys are read from files
SNAPSHOTS = 32  # mailboxes whose messages' immutable facts are kept for SORT/THREAD ... ALL
# (account directory, mailbox, UIDVALIDITY) -> UID -> MessageInfo; only the fields a message never changes
# (file, internal date, size) are read from these, never the flags
_SNAPSHOTS: OrderedDict[tuple[str, str, int], dict[int, MessageInfo]] = OrderedDict()
RESULTS = 16  # answers to SORT/THREAD ... ALL kept: the same mailbox asked again (a client's refresh)
# (command, account directory, mailbox, UIDVALIDITY, arguments, the view's UIDs) -> numbers or thread-list:
# a UID names the same immutable message for as long as UIDVALIDITY holds, so the answer is a
# function of the key (the UIDs also fix the sequence numbers)
_RESULTS: OrderedDict[tuple, object] = OrderedDict()


@command("SORT", states=SELECTED)
async def sort(session: Session, cmd: Sort) -> None:
    remembered = _result_key(session, "SORT", cmd.criteria, (cmd.uid, cmd.charset, cmd.keys))
    numbers = _RESULTS.get(remembered) if remembered is not None else None
    modseq = None
    if numbers is None:
        hits = await _matching(session, cmd.tag, cmd.charset, cmd.criteria)
        if hits is None:
            return
        ordered = await _sorted(hits, cmd.keys)
        numbers = [info.uid if cmd.uid else seq for seq, info in ordered]
        _remember(remembered, numbers)
        if searchmod.uses_modseq(cmd.criteria) and ordered:  # RFC 7162 §3.1.5 / §3.1.6 (never cached)
            modseq = max(info.modseq for _, info in ordered)
    assert isinstance(numbers, list)
    if cmd.returns is None:
        session.send("* SORT" + "".join(f" {n}" for n in numbers) + (f" (MODSEQ {modseq})" if modseq else ""))
    else:
        session.send(_esort(cmd, numbers) + (f" MODSEQ {modseq}" if modseq else ""))
    session.sync_after_command(cmd.uid)
    session.send(f"{cmd.tag} OK Sort completed.")


@command("THREAD", states=SELECTED)
async def thread(session: Session, cmd: Thread) -> None:
    remembered = _result_key(session, "THREAD", cmd.criteria, (cmd.uid, cmd.charset, cmd.algorithm))
    rendered = _RESULTS.get(remembered) if remembered is not None else None
    if rendered is None:
        rendered = await _threads(session, cmd)
        if rendered is None:
            return
        _remember(remembered, rendered)
    session.send("* THREAD" + (f" {rendered}" if rendered else ""))
    session.sync_after_command(cmd.uid)
    session.send(f"{cmd.tag} OK Thread completed.")


def _result_key(session: Session, name: str, criteria: tuple, arguments: tuple) -> tuple | None:
    """The key of a remembered answer; None when the criteria are more than ALL (flags change)."""
    if criteria != ("AND", [("ALL",)]) or session.view is None or session.account is None:
        return None
    view = session.view
    return (name, str(session.account.path), view.name, view.uidvalidity, arguments, tuple(view.uids))


def _remember(key: tuple | None, answer: object) -> None:
    if key is None:
        return
    _RESULTS[key] = answer
    while len(_RESULTS) > RESULTS:
        _RESULTS.popitem(last=False)


async def _threads(session: Session, cmd: Thread) -> str | None:
    """The thread-list of the matching messages; None after a NO for the charset."""
    hits = await _matching(session, cmd.tag, cmd.charset, cmd.criteria)
    if hits is None:
        return None
    items = []
    for order, (seq, info) in enumerate(hits):
        try:
            items.append(sortkeys.thread_item(info.uid if cmd.uid else seq, order, info))
        except FileNotFoundError:  # expunged by another session meanwhile
            continue
        if order % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    if cmd.algorithm == "REFERENCES":
        threads = threading.references(items)
    else:
        threads = threading.ordered_subject(items)
    return threading.render(threads)


async def _matching(session: Session, tag: str, charset: str, criteria: tuple) -> list[tuple[int, MessageInfo]] | None:
    """(sequence number, message) of every message matching ``criteria``, in mailbox order; None
    after answering NO for an unknown charset (RFC 5256 §3: NO [BADCHARSET])."""
    assert session.view is not None and session.account is not None
    try:
        codec = searchmod.check_charset(charset)
    except searchmod.BadCharset:
        session.send(f"{tag} NO [BADCHARSET] Unknown charset {charset}")
        return None
    if criteria == ("AND", [("ALL",)]):
        return _everything(session)
    if searchmod.uses_modseq(criteria):
        session.enable_condstore()
    return await matching(session, criteria, codec)


def _everything(session: Session) -> list[tuple[int, MessageInfo]]:
    """Every message of the view, for criteria ALL (what clients send): the sort and thread keys
    need no flags, so the index is asked only about UIDs this process has not seen yet, and a
    warm SORT of 10,000 messages reads neither SQLite nor a file."""
    assert session.view is not None and session.account is not None
    view = session.view
    key = (str(session.account.path), view.name, view.uidvalidity)
    known = _SNAPSHOTS.pop(key, None) or {}
    if len(known) > 2 * len(view.uids) + 1000:  # many expunged since: start again
        known = {}
    _SNAPSHOTS[key] = known
    while len(_SNAPSHOTS) > SNAPSHOTS:
        _SNAPSHOTS.popitem(last=False)
    missing = [uid for uid in view.uids if uid not in known]
    if missing:
        for info in session.account.messages(view.name, missing):
            known[info.uid] = info
    return [(seq, known[uid]) for seq, uid in enumerate(view.uids, start=1) if uid in known]


async def _sorted(hits: list[tuple[int, MessageInfo]], keys: tuple[tuple[str, bool], ...]
                  ) -> list[tuple[int, MessageInfo]]:
    """RFC 5256 §3: by each key in turn (REVERSE descending), ties in mailbox order; stable sorts
    from the last key to the first give exactly that."""
    names = [name for name, _ in keys]
    rows: list[tuple[int, MessageInfo, dict[str, str | float]]] = []
    for i, (seq, info) in enumerate(hits):
        try:
            rows.append((seq, info, {name: sortkeys.key_value(name, info) for name in names}))
        except FileNotFoundError:  # expunged by another session meanwhile
            continue
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    for name, reverse in reversed(keys):
        rows.sort(key=lambda row, n=name: row[2][n], reverse=reverse)  # type: ignore[misc]
    return [(seq, info) for seq, info, _ in rows]


def _esort(cmd: Sort, numbers: list[int]) -> str:
    """RFC 5267 §3.1: MIN and MAX are the first and last in sort order, ALL keeps the sort order;
    RETURN () means ALL (RFC 4731 §3.1)."""
    opts = set(cmd.returns or ()) or {"ALL"}
    parts = [f'(TAG "{cmd.tag}")']
    if cmd.uid:
        parts.append("UID")
    if numbers:
        if "MIN" in opts:
            parts.append(f"MIN {numbers[0]}")
        if "MAX" in opts:
            parts.append(f"MAX {numbers[-1]}")
        if "ALL" in opts:
            parts.append("ALL " + compress(numbers))
    if "COUNT" in opts:
        parts.append(f"COUNT {len(numbers)}")
    return "* ESEARCH " + " ".join(parts)


