"""The selected mailbox as this session has told the client about it (RFC 3501 §2.3.1), and its sync.

The view keeps the UID list in sequence order, each message's flags, \\Recent, the keywords
announced in FLAGS and the MODSEQ the client has seen. ``sync`` compares it with the store and
reports the difference as untagged EXISTS / RECENT / FETCH / EXPUNGE (or VANISHED) responses, at
the points RFC 3501 §7.4.1 and §5.2 allow. ``ChangeWatch`` wakes IDLE when the store signals a
change to the selected mailbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from appliance.imap import fetch as fetchmod
from appliance.imap.parser import ParseError, SequenceSet
from appliance.imap.response import compress
from appliance.store import Account, FolderInfo, FolderNotFound

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_LOWER = frozenset(f.lower() for f in SYSTEM_FLAGS) | {"\\recent"}

Send = Callable[[str], None]


def valid_flag(flag: str) -> bool:
    """Keywords are free; a backslash flag must be a system flag (RFC 3501 §2.3.2)."""
    return not flag.startswith("\\") or flag.lower() in _SYSTEM_LOWER


class Lost(Enum):
    """Why a selected mailbox can no longer be shown; the value is the BYE text."""

    DELETED = "Selected mailbox was deleted"
    RECREATED = "Selected mailbox was renamed or recreated"


@dataclass
class View:
    """What the client knows of the selected mailbox; ``send`` queues its untagged responses."""

    account: Account
    send: Send = field(repr=False)
    name: str
    readonly: bool
    uidvalidity: int
    uids: list[int]
    flags: dict[int, frozenset[str]]
    recent: set[int]
    modseq: int
    keywords: set[str] = field(default_factory=set)
    dirty: bool = False  # expunges seen but not yet reported
    recent_reported: int = 0
    high: int = 0  # the highest UID ever announced to the client
    no_recent: bool = False  # IMAP4rev2 (RFC 9051 appendix E): no \Recent, no RECENT, see hide_recent

    @classmethod
    def open(cls, account: Account, info: FolderInfo, readonly: bool, send: Send) -> View:
        """The view SELECT (or EXAMINE, ``readonly``) starts with; SELECT claims \\Recent."""
        recent = account.recent_uids(info.name) if readonly else account.claim_recent(info.name)
        messages = account.flag_list(info.name)
        view = cls(account, send, info.name, readonly, info.uidvalidity, [uid for uid, _ in messages],
                   dict(messages), recent, info.highestmodseq, recent_reported=len(recent),
                   high=messages[-1][0] if messages else 0)
        for flags in {flags for _, flags in messages}:
            view.keywords |= {f for f in flags if not f.startswith("\\")}
        return view

    def hide_recent(self) -> None:
        """For an IMAP4rev2 session: \\Recent is neither shown nor counted (RFC 9051 appendix E)."""
        self.no_recent = True
        self.recent.clear()
        self.recent_reported = 0

    def seq_of(self) -> dict[int, int]:
        return {uid: i + 1 for i, uid in enumerate(self.uids)}

    def first_unseen(self) -> int | None:
        """The sequence number of the first message without \\Seen (SELECT's UNSEEN code)."""
        flags = self.flags
        return next((i + 1 for i, uid in enumerate(self.uids) if "\\Seen" not in flags[uid]), None)

    def resolve(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set; BAD-worthy ParseError for sequence numbers out of range."""
        uids = self.uids
        if uid:
            return sequence.resolve_within(uids)
        if not uids:
            raise ParseError("Invalid messageset (mailbox is empty)")
        if sequence.highest(len(uids)) > len(uids):
            raise ParseError("Invalid messageset (sequence number beyond the last message)")
        return [uids[n - 1] for n in sorted(sequence.resolve(len(uids)))]

    def announce_keywords(self, flag_sets: Iterable[frozenset[str]]) -> None:
        """Send FLAGS (and PERMANENTFLAGS) when ``flag_sets`` hold a keyword the client has not been
        told of. Called before any FETCH that shows those flags: RFC 3501 §7.2.6 / RFC 9051 §7.3.5
        let a client reject a FETCH naming a flag that is not in the mailbox's FLAGS."""
        known = self.keywords
        new = {f for flags in flag_sets for f in flags if f not in known and not f.startswith("\\")}
        if new:
            known |= new
            self.send_flags(permanent=True)

    def send_flags(self, permanent: bool = False) -> None:
        flags = " ".join([*SYSTEM_FLAGS, *sorted(self.keywords)])
        self.send(f"* FLAGS ({flags})")
        if permanent:
            if self.readonly:
                self.send("* OK [PERMANENTFLAGS ()] Read-only mailbox.")
            else:
                self.send(f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted.")

    def sync(self, allow_expunge: bool, uid_fetch: bool, condstore: bool, qresync: bool) -> Lost | None:
        """Report changes since the client's view as untagged responses (RFC 3501 §7.3.1, §7.4.1).

        Expunges wait (``dirty``) unless ``allow_expunge``; flag changes name the UID when the
        command was a UID command or CONDSTORE is on. Returns why the mailbox is gone, if it is."""
        account = self.account
        send = self.send
        try:
            info = account.folder(self.name)
        except FolderNotFound:
            return Lost.DELETED
        if info.uidvalidity != self.uidvalidity:
            return Lost.RECREATED
        if info.highestmodseq == self.modseq and not self.dirty:
            return None
        claimed: set[int] = set()
        if not self.readonly and info.uidnext - 1 > self.high:
            claimed = account.claim_recent(self.name)  # before reading the UIDs: no new message missed
        current = account.uids(self.name)
        present = set(current)
        gone = [u for u in self.uids if u not in present]
        if gone:
            if allow_expunge:
                if qresync:
                    send(f"* VANISHED {compress(gone)}")  # RFC 7162 §3.2.10
                else:
                    seqs = self.seq_of()
                    for uid in reversed(gone):
                        send(f"* {seqs[uid]} EXPUNGE")
                gone_set = set(gone)
                self.uids = [u for u in self.uids if u not in gone_set]
                for uid in gone:
                    self.flags.pop(uid, None)
                    self.recent.discard(uid)
                self.dirty = False
            else:
                self.dirty = True
        else:
            self.dirty = False
        new = [u for u in current if u > self.high]
        changes = account.changed_since(self.name, self.modseq)
        self.announce_keywords(msg.flags for msg in changes)  # FLAGS before the FETCHes that use them
        if not self.no_recent:
            self.recent |= claimed & present
        if new:
            self.uids.extend(new)
            self.high = new[-1]
            send(f"* {len(self.uids)} EXISTS")
        if len(self.recent) != self.recent_reported:  # only when it changed, as Dovecot
            send(f"* {len(self.recent)} RECENT")
            self.recent_reported = len(self.recent)
        seqs = self.seq_of()
        new_set = set(new)
        for msg in changes:
            if msg.uid in new_set:
                self.flags[msg.uid] = msg.flags
                continue
            if msg.uid not in seqs or self.flags.get(msg.uid) == msg.flags:
                continue
            self.flags[msg.uid] = msg.flags
            parts = [f"FLAGS {fetchmod.flag_list(msg.flags, msg.uid in self.recent)}"]
            if uid_fetch or condstore:
                parts.insert(0, f"UID {msg.uid}")
            if condstore:
                parts.append(f"MODSEQ ({msg.modseq})")
            send(f"* {seqs[msg.uid]} FETCH ({' '.join(parts)})")
        self.modseq = info.highestmodseq
        return None

    def qresync_report(self, modseq: int, known: SequenceSet | None) -> None:
        """RFC 7162 §3.2.5.2: what changed since the client's MODSEQ: VANISHED (EARLIER), then FETCH."""
        vanished = self.account.expunged_since(self.name, modseq)
        if known is not None and vanished:
            vanished = known.resolve_within(vanished)
        if vanished:
            self.send(f"* VANISHED (EARLIER) {compress(vanished)}")
        seqs = self.seq_of()
        changes = self.account.changed_since(self.name, modseq)
        self.announce_keywords(msg.flags for msg in changes)
        for msg in changes:
            if msg.uid not in seqs or (known is not None and not known.resolve_within([msg.uid])):
                continue
            flags = fetchmod.flag_list(msg.flags, msg.uid in self.recent)
            self.send(f"* {seqs[msg.uid]} FETCH (UID {msg.uid} FLAGS {flags} MODSEQ ({msg.modseq}))")


class ChangeWatch:
    """Wakes IDLE when the store signals a change to the watched (selected) mailbox.

    The store calls ``notified`` from whichever thread made the change; other processes' changes
    are not signalled and are found by IDLE's poll."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.folder: str | None = None
        self._loop = asyncio.get_running_loop()
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self, account: Account) -> None:
        self._unsubscribe = account.subscribe(self.notified)

    def notified(self, folder: str) -> None:
        if folder == self.folder:
            self._loop.call_soon_threadsafe(self.changed.set)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
