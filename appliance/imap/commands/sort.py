"""SORT, UID SORT, THREAD and UID THREAD (RFC 5256), with ESORT results (RFC 5267 §3).

The messages that match the search criteria are found as SEARCH finds them (``imap.search``);
their keys come from ``imap.sortkeys`` (cached per message file) and the thread algorithms from
``imap.threading``. Results name sequence numbers, or UIDs for the UID forms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.imap import search as searchmod
from appliance.imap import sortkeys, threading
from appliance.imap.commands.registry import command
from appliance.imap.message import Message, cached_header, read_message
from appliance.imap.parser import Sort, Thread
from appliance.imap.response import compress
from appliance.imap.state import SELECTED
from appliance.store import MessageInfo

if TYPE_CHECKING:
    from appliance.imap.session import Session

YIELD_EVERY = 500  # messages between yields to the event loop while keys are read from files


@command("SORT", states=SELECTED)
async def sort(session: Session, cmd: Sort) -> None:
    hits = await _matching(session, cmd.tag, cmd.charset, cmd.criteria)
    if hits is None:
        return
    ordered = await _sorted(hits, cmd.keys)
    numbers = [info.uid if cmd.uid else seq for seq, info in ordered]
    if cmd.returns is None:
        session.send("* SORT" + "".join(f" {n}" for n in numbers))
    else:
        session.send(_esort(cmd, numbers))
    session.sync_after_command(cmd.uid)
    session.send(f"{cmd.tag} OK Sort completed.")


@command("THREAD", states=SELECTED)
async def thread(session: Session, cmd: Thread) -> None:
    hits = await _matching(session, cmd.tag, cmd.charset, cmd.criteria)
    if hits is None:
        return
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
    rendered = threading.render(threads)
    session.send("* THREAD" + (f" {rendered}" if rendered else ""))
    session.sync_after_command(cmd.uid)
    session.send(f"{cmd.tag} OK Thread completed.")


async def _matching(session: Session, tag: str, charset: str, criteria: tuple) -> list[tuple[int, MessageInfo]] | None:
    """(sequence number, message) of every message matching ``criteria``, in mailbox order; None
    after answering NO for an unknown charset (RFC 5256 §3: NO [BADCHARSET])."""
    assert session.view is not None and session.account is not None
    try:
        codec = searchmod.check_charset(charset)
    except searchmod.BadCharset:
        session.send(f"{tag} NO [BADCHARSET] Unknown charset {charset}")
        return None
    view = session.view
    infos = {m.uid: m for m in session.account.messages(view.name)}
    need_body = searchmod.needs_message(criteria)
    header_only = not searchmod.needs_text(criteria)
    largest_uid = view.uids[-1] if view.uids else 0
    if searchmod.uses_modseq(criteria):
        session.enable_condstore()
    hits: list[tuple[int, MessageInfo]] = []
    for seq, uid in enumerate(view.uids, start=1):
        info = infos.get(uid)
        if info is None:
            continue
        load = _loader(info.file, header_only) if need_body else _no_message
        candidate = searchmod.Candidate(seq, info, uid in view.recent, len(view.uids), largest_uid, load)
        try:
            if searchmod.matches(criteria, candidate, codec):
                hits.append((seq, info))
        except FileNotFoundError:
            continue
        if need_body and seq % 200 == 0:
            await asyncio.sleep(0)
    return hits


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


def _loader(path: str, header_only: bool) -> Callable[[], Message]:
    if header_only:
        return lambda: Message(cached_header(path))
    return lambda: Message(read_message(path))


def _no_message() -> Message:
    raise AssertionError("search key needs the message but none was loaded")

