"""SEARCH and UID SEARCH (RFC 3501 §6.4.4), with ESEARCH results (RFC 4731) and MODSEQ (RFC 7162)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.imap import search as searchmod
from appliance.imap.commands.registry import command
from appliance.imap.message import Message, cached_header, read_message
from appliance.imap.parser import Search
from appliance.imap.response import compress
from appliance.imap.state import SELECTED
from appliance.store import MessageInfo

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("SEARCH", states=SELECTED)
async def search(session: Session, cmd: Search) -> None:
    assert session.view is not None and session.account is not None
    try:
        codec = searchmod.check_charset(cmd.charset)
    except searchmod.BadCharset:
        session.send(f"{cmd.tag} NO [BADCHARSET] Unknown charset {cmd.charset}")
        return
    hits = await matching(session, cmd.criteria, codec)
    numbers = [info.uid if cmd.uid else seq for seq, info in hits]
    modseq_part = ""
    if searchmod.uses_modseq(cmd.criteria) and hits:
        modseq_part = f" (MODSEQ {max(info.modseq for _, info in hits)})"
    if searchmod.uses_modseq(cmd.criteria):
        session.enable_condstore()
    if cmd.returns is not None and "SAVE" in cmd.returns:
        session.saved = _saved(cmd.returns, [info.uid for _, info in hits])
    if cmd.returns == ("SAVE",):
        pass  # RFC 5182 §2.1: SAVE alone answers no ESEARCH
    elif cmd.returns is not None or session.imap4rev2:  # RFC 9051 §7.3.4: SEARCH answers with ESEARCH
        session.send(_esearch(cmd, numbers, [info.modseq for _, info in hits]))
    else:
        session.send("* SEARCH" + "".join(f" {n}" for n in numbers) + modseq_part)
    session.sync_after_command(cmd.uid)
    session.send(f"{cmd.tag} OK Search completed.")


def _saved(returns: tuple[str, ...], uids: list[int]) -> list[int]:
    """What RETURN (SAVE ...) saves (RFC 5182 §2.1): with MIN and/or MAX only, just those; else all."""
    others = set(returns) - {"SAVE"}
    if uids and others and others <= {"MIN", "MAX"}:
        return sorted({min(uids) if "MIN" in others else max(uids), max(uids) if "MAX" in others else min(uids)})
    return uids


async def matching(session: Session, criteria: tuple, codec: str) -> list[tuple[int, MessageInfo]]:
    """(sequence number, message) of every message of the selected mailbox matching ``criteria``, in mailbox
    order: what SEARCH answers, and what SORT and THREAD order (RFC 5256 §3: the same search keys)."""
    assert session.view is not None and session.account is not None
    view = session.view
    infos = {m.uid: m for m in session.account.messages(view.name)}
    need_body = searchmod.needs_message(criteria)
    header_only = not searchmod.needs_text(criteria)
    largest_uid = view.uids[-1] if view.uids else 0
    answers: dict[int, searchmod.FtsAnswer] = {}
    if not header_only and session.store.fts.enabled:  # BODY/TEXT answered from the full-text index
        answers = await asyncio.to_thread(searchmod.index_answers, criteria, session.account,
                                          session.store.fts, [infos[u] for u in view.uids if u in infos], codec)
    hits: list[tuple[int, MessageInfo]] = []
    for seq, uid in enumerate(view.uids, start=1):
        info = infos.get(uid)
        if info is None:
            continue
        candidate = searchmod.Candidate(
            seq, info, uid in view.recent, len(view.uids), largest_uid,
            _loader(info.file, header_only) if need_body else _no_message, answers=answers,
        )
        try:
            if searchmod.matches(criteria, candidate, codec):
                hits.append((seq, info))
        except FileNotFoundError:
            continue
        if need_body and seq % 200 == 0:
            await asyncio.sleep(0)
    return hits


def _esearch(cmd: Search, numbers: list[int], modseqs: list[int]) -> str:
    """RFC 4731 ESEARCH (RETURN () means ALL), with MODSEQ when the criteria use it (RFC 7162 §3.1.5)."""
    opts = set(cmd.returns or ()) or {"ALL"}
    parts = [f'(TAG "{cmd.tag}")']
    if cmd.uid:
        parts.append("UID")
    relevant: list[int] = []
    if numbers:
        if "MIN" in opts:
            parts.append(f"MIN {min(numbers)}")
            relevant.append(modseqs[numbers.index(min(numbers))])
        if "MAX" in opts:
            parts.append(f"MAX {max(numbers)}")
            relevant.append(modseqs[numbers.index(max(numbers))])
        if "ALL" in opts:
            parts.append("ALL " + compress(numbers))
            relevant += modseqs
    if "COUNT" in opts:
        parts.append(f"COUNT {len(numbers)}")
        relevant += modseqs
    if searchmod.uses_modseq(cmd.criteria) and relevant:
        parts.append(f"MODSEQ {max(relevant)}")
    return "* ESEARCH " + " ".join(parts)


def _loader(path: str, header_only: bool) -> Callable[[], Message]:
    """Header keys need only the header: read that much of the file, not the whole message."""
    if header_only:
        return lambda: Message(cached_header(path))
    return lambda: Message(read_message(path))


def _no_message() -> Message:
    raise AssertionError("search key needs the message but none was loaded")
