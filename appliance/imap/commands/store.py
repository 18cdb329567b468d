"""STORE and UID STORE (RFC 3501 §6.4.6), with UNCHANGEDSINCE (RFC 7162 §3.1.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap import fetch as fetchmod
from appliance.imap.commands.registry import command
from appliance.imap.parser import StoreCommand
from appliance.imap.response import compress
from appliance.imap.state import SELECTED
from appliance.imap.view import SYSTEM_FLAGS, valid_flag

if TYPE_CHECKING:
    from appliance.imap.session import Session


@command("STORE", states=SELECTED)
async def store(session: Session, cmd: StoreCommand) -> None:
    assert session.view is not None and session.account is not None
    view = session.view
    account = session.account
    if view.readonly:
        session.send(f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only")
        return
    for flag in cmd.flags:
        if not valid_flag(flag):
            session.send(f"{cmd.tag} BAD Invalid system flag {flag}")
            return
    uids = view.resolve(cmd.sequence, cmd.uid)
    if cmd.unchanged_since is not None:
        session.enable_condstore()
    condstore = session.condstore
    changed, failed = account.store_flags(view.name, uids, cmd.flags, cmd.mode, cmd.unchanged_since)
    changed_by_uid = {m.uid: m for m in changed}
    seqs = view.seq_of()
    failed_set = set(failed)
    report = [u for u in uids if u not in failed_set]
    current = {m.uid: m for m in account.messages(view.name)} if not cmd.silent or condstore else {}
    # the FETCHes below show whole flag sets, another session's new keywords included (RFC 3501 §7.2.6)
    added = frozenset(cmd.flags) if cmd.mode != "remove" else frozenset()
    view.announce_keywords([added, *(m.flags for m in changed), *(current[u].flags for u in report if u in current)])
    for uid in report:
        info = changed_by_uid.get(uid) or current.get(uid)
        if info is None:
            continue
        if cmd.silent:
            # the client takes the flags to be what it knew with this change applied (RFC 3501
            # §6.4.6); a difference (another session's change) stays for the sync to report
            view.flags[uid] = assumed_flags(view.flags.get(uid, frozenset()), cmd.flags, cmd.mode)
        else:
            view.flags[uid] = info.flags
        if cmd.silent and not (condstore and uid in changed_by_uid):
            continue
        parts = []
        if cmd.uid:
            parts.append(f"UID {uid}")
        if not cmd.silent:
            parts.append("FLAGS " + fetchmod.flag_list(info.flags, uid in view.recent))
        if condstore:
            parts.append(f"MODSEQ ({info.modseq})")
        session.send(f"* {seqs[uid]} FETCH ({' '.join(parts)})")
    if failed:
        numbers = failed if cmd.uid else [seqs[u] for u in failed if u in seqs]
        session.send(f"{cmd.tag} OK [MODIFIED {compress(numbers)}] Conditional store failed.")
        return
    session.sync_after_command(cmd.uid)
    session.send(f"{cmd.tag} OK Store completed.")


_CANONICAL = {f.lower(): f for f in SYSTEM_FLAGS}


def assumed_flags(before: frozenset[str], flags: tuple[str, ...], mode: str) -> frozenset[str]:
    """A message's flags as a client that sent a .SILENT STORE (and got no FETCH) takes them to be."""
    wanted = frozenset(_CANONICAL.get(f.lower(), f) for f in flags if f.lower() != "\\recent")
    if mode == "add":
        return before | wanted
    if mode == "remove":
        return before - wanted
    return wanted
