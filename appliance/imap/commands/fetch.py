"""FETCH and UID FETCH (RFC 3501 §6.4.5), with CHANGEDSINCE and VANISHED (RFC 7162 §3.1.4, §3.2.6).

The items themselves are rendered by ``imap.fetch``; this module picks the messages, sets \\Seen
for non-PEEK body items and writes one untagged FETCH per message."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from appliance.imap import fetch as fetchmod
from appliance.imap.binary import UnknownCTE
from appliance.imap.commands.registry import command
from appliance.imap.message import Message, read_message
from appliance.imap.parser import Fetch, FetchAtt
from appliance.imap.preview import preview_text
from appliance.imap.response import compress, quote
from appliance.imap.state import SELECTED
from appliance.store import MessageInfo

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("FETCH", states=SELECTED)
async def fetch(session: Session, cmd: Fetch) -> None:
    assert session.view is not None and session.account is not None
    view = session.view
    account = session.account
    send = session.send
    uids = view.resolve(cmd.sequence, cmd.uid)
    items = list(cmd.items)
    if cmd.uid and not any(i.name == "UID" for i in items):
        items.insert(0, FetchAtt("UID"))
    if cmd.changed_since is not None or any(i.name == "MODSEQ" for i in items):
        session.enable_condstore()
    if session.condstore and not any(i.name == "MODSEQ" for i in items):
        items.append(FetchAtt("MODSEQ"))
    fetch_items = tuple(items)
    body = fetchmod.needs_body(fetch_items)
    set_seen = fetchmod.sets_seen(fetch_items) and not view.readonly
    wanted = set(uids)
    if len(wanted) * 4 < len(view.uids):
        infos = account.messages(view.name, wanted)
    else:
        infos = [m for m in account.messages(view.name) if m.uid in wanted]
    if cmd.changed_since is not None:
        infos = [m for m in infos if m.modseq > cmd.changed_since]
    if cmd.vanished:
        if not (cmd.uid and session.qresync):
            send(f"{cmd.tag} BAD VANISHED needs UID FETCH and ENABLE QRESYNC")
            return
        assert cmd.changed_since is not None
        gone = cmd.sequence.resolve_within(account.expunged_since(view.name, cmd.changed_since))
        if gone:
            send(f"* VANISHED (EARLIER) {compress(gone)}")
    if set_seen:
        unseen = [m.uid for m in infos if "\\Seen" not in m.flags]
        if unseen:
            changed, _ = account.store_flags(view.name, unseen, ["\\Seen"], "add")
            updated = {m.uid: m for m in changed}
            infos = [updated.get(m.uid, m) for m in infos]
            fetch_items = _with_flags(fetch_items, cmd.uid)
            for m in changed:
                view.flags[m.uid] = m.flags
    if any(i.name == "FLAGS" for i in fetch_items):  # RFC 3501 §7.2.6: FLAGS before a FETCH using them
        view.announce_keywords(m.flags for m in infos)
    seqs = view.seq_of()
    extras = await _extras(session, fetch_items, infos)
    missing = len(wanted) - len(infos) if cmd.changed_since is None else 0
    wire = session.wire
    unknown_cte = ""
    for info in infos:
        try:
            message = Message(read_message(info.file)) if body else None
            parts = fetchmod.render(info, fetch_items, info.uid in view.recent, message, extras.get(info.uid))
        except FileNotFoundError:  # expunged by another session meanwhile
            missing += 1
            continue
        except UnknownCTE as exc:  # RFC 3516 §4.3: that message is left out, the command fails
            unknown_cte = str(exc)
            continue
        send(f"* {seqs[info.uid]} FETCH ({' '.join(parts)})")
        await wire.maybe_flush()
    if unknown_cte:
        send(f"{cmd.tag} NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding {unknown_cte[:40]!r}")
        return
    if missing and not cmd.uid:
        send(f"{cmd.tag} NO [EXPUNGEISSUED] Some of the requested messages no longer exist.")
        return
    session.sync_after_command(cmd.uid)
    send(f"{cmd.tag} OK Fetch completed.")


def _with_flags(items: tuple[FetchAtt, ...], uid: bool) -> tuple[FetchAtt, ...]:
    """Add FLAGS when a fetch set \\Seen (RFC 3501 §6.4.5), first (after UID), where Dovecot puts it."""
    if any(i.name == "FLAGS" for i in items):
        return items
    at = 1 if items and items[0].name == "UID" else 0
    return (*items[:at], FetchAtt("FLAGS"), *items[at:])


async def _extras(session: Session, items: tuple[FetchAtt, ...], infos: list[MessageInfo]) -> dict[int, dict[str, str]]:
    """UID -> the item values kept in the store rather than in the message: EMAILID (RFC 8474 §5.1) and the
    cached PREVIEW (RFC 8970), computed here for the messages that have none yet."""
    names = {i.name for i in items}
    if not names & {"EMAILID", "PREVIEW"} or not infos:
        return {}
    assert session.account is not None and session.view is not None
    account, folder = session.account, session.view.name
    uids = [m.uid for m in infos]
    out: dict[int, dict[str, str]] = {uid: {} for uid in uids}
    if "EMAILID" in names:
        for uid, value in account.email_ids(folder, uids).items():
            out[uid]["EMAILID"] = f"({value})"
    if "PREVIEW" in names:
        previews = account.previews(folder, uids)
        missing = [m for m in infos if previews.get(m.uid) is None]
        if missing:
            computed = await asyncio.to_thread(_compute_previews, missing)
            account.store_previews(folder, computed)
            previews.update(computed)
        for uid, text in previews.items():
            if text is not None:
                out[uid]["PREVIEW"] = quote(text)
    return out


def _compute_previews(infos: list[MessageInfo]) -> dict[int, str]:
    """Previews of messages not in the cache yet (a message expunged meanwhile has none)."""
    out = {}
    for info in infos:
        try:
            out[info.uid] = preview_text(read_message(info.file))
        except FileNotFoundError:
            continue
    return out
