"""Running checked Sieve scripts on one message for one recipient: the actions to take, nothing done yet.

The interpreter only decides (RFC 5228 §2.10: actions are collected, then carried out at the end); local
delivery carries them out (appliance/delivery/local.py), so that a failure half-way changes nothing here and a
retry can tell what it already did. A sequence of scripts (the administrator's before, the user's, the
administrator's after) runs as Pigeonhole runs it: the next script runs only while the implicit keep is still in
effect, and the implicit keep of the last script that ran decides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from appliance.sieve.checker import Node, Script
from appliance.sieve.grammar import SieveError
from appliance.sieve.mail import MailView, address_part
from appliance.sieve.matching import match

MAX_ACTIONS = 64  # RFC 5228 §10: an implementation limits what one script can make it do


class SieveRuntimeError(SieveError):
    """A script failed while it ran (too many redirects, conflicting actions...): the message goes to INBOX."""


@dataclass(frozen=True)
class FileInto:
    folder: str
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True)
class Redirect:
    address: str


@dataclass(frozen=True)
class Reject:
    reason: str
    extended: bool  # ereject (RFC 5429 §2.1): the SMTP-level refusal where possible


@dataclass(frozen=True)
class Vacation:
    reason: str
    seconds: int
    subject: str | None
    from_address: str | None
    addresses: tuple[str, ...]
    mime: bool
    handle: str


Action = FileInto | Redirect | Reject | Vacation


@dataclass
class Outcome:
    """What the scripts decided: explicit actions in order, and whether the implicit keep (to INBOX) remains."""

    actions: list[Action] = field(default_factory=list)
    implicit_keep: bool = True
    keep_flags: tuple[str, ...] = ()

    def final(self) -> list[Action]:
        """Every action, the implicit keep included, each folder once (RFC 5228 §4.1: duplicates are merged)."""
        out: list[Action] = []
        seen: set[object] = set()
        actions = list(self.actions)
        if self.implicit_keep:
            actions.append(FileInto("INBOX", self.keep_flags))
        for action in actions:
            key = ("file", action.folder.upper() if action.folder.upper() == "INBOX" else action.folder) \
                if isinstance(action, FileInto) else action
            if key in seen:
                continue
            seen.add(key)
            out.append(action)
        return out


@dataclass
class Environment:
    """What the scripts see beside the message: the time, the user's folders, the limits of this host."""

    view: MailView
    now: datetime
    mailbox_exists: Callable[[str], bool] = lambda name: name.upper() == "INBOX"
    max_redirects: int = 4
    vacation_days: tuple[int, int] = (1, 30)


class _Stop(Exception):
    pass


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*|[0-9]+)\}")
_WILDCARDS = re.compile(r"([*?\\])")


def run_sequence(scripts: Sequence[Script], env: Environment, outcome: Outcome | None = None) -> Outcome:
    """Run ``scripts`` in order on one message (after the actions already in ``outcome``); SieveError (logged
    by the caller) when one fails at run time."""
    outcome = outcome if outcome is not None else Outcome()
    for script in scripts:
        _Run(script, env, outcome).run()
        if not outcome.implicit_keep:
            break
    return outcome


class _Run:
    def __init__(self, script: Script, env: Environment, outcome: Outcome) -> None:
        self.script = script
        self.env = env
        self.outcome = outcome
        self.variables_on = "variables" in script.requires
        self.variables: dict[str, str] = {}
        self.captures: list[str] = []
        self.flags: list[str] = []
        self.vacation = False

    def run(self) -> None:
        try:
            self.block(self.script.commands)
        except _Stop:
            pass
        self.outcome.keep_flags = tuple(self.flags)

    # ------------------------------------------------------------------ strings

    def s(self, value: object) -> str:
        """A string argument with its variables expanded (RFC 5229 §3), when the script requires variables."""
        text = str(value)
        if not self.variables_on or "${" not in text:
            return text
        return _VARIABLE.sub(self._lookup, text)

    def ss(self, value: object) -> list[str]:
        return [self.s(v) for v in value] if isinstance(value, tuple) else [self.s(value)]

    def _lookup(self, found: re.Match[str]) -> str:
        name = found.group(1)
        if name.isdigit():
            index = int(name)
            return self.captures[index] if index < len(self.captures) else ""
        return self.variables.get(name.lower(), "")

    # ------------------------------------------------------------------ commands

    def block(self, nodes: Sequence[Node]) -> None:
        taken = False
        for node in nodes:
            if node.name == "if":
                taken = self.test(node.tests[0])
                if taken:
                    self.block(node.block or ())
            elif node.name == "elsif":
                if not taken:
                    taken = self.test(node.tests[0])
                    if taken:
                        self.block(node.block or ())
            elif node.name == "else":
                if not taken:
                    self.block(node.block or ())
                taken = True
            else:
                self.command(node)

    def command(self, node: Node) -> None:
        name, tags, args = node.name, node.tags, node.args
        if name == "stop":
            raise _Stop
        if name in ("setflag", "addflag", "removeflag"):
            self.flag_command(node)
            return
        if name == "set":
            self.variables[self.s(args[0]).lower()] = self.modify(tags, self.s(args[1]))
            return
        if len(self.outcome.actions) >= MAX_ACTIONS:
            raise SieveRuntimeError(node.line, f"more than {MAX_ACTIONS} actions")
        if name == "discard":
            self.outcome.implicit_keep = False
        elif name == "keep":
            self.add(node, FileInto("INBOX", self.flags_of(tags)))
            self.outcome.implicit_keep = False
        elif name == "fileinto":
            folder = self.s(args[0])
            if not folder:
                raise SieveRuntimeError(node.line, "fileinto an empty folder name")
            self.add(node, FileInto(folder, self.flags_of(tags), "create" in tags))
            if "copy" not in tags:
                self.outcome.implicit_keep = False
        elif name == "redirect":
            self.redirect(node)
        elif name in ("reject", "ereject"):
            self.add(node, Reject(self.s(args[0]), name == "ereject"))
            self.outcome.implicit_keep = False
        elif name == "vacation":
            self.vacation_command(node)

    def add(self, node: Node, action: Action) -> None:
        """Record an action, refusing the combinations RFC 5429 §2.1 and RFC 5230 §4.7 forbid."""
        actions = self.outcome.actions
        has_reject = any(isinstance(a, Reject) for a in actions)
        if isinstance(action, Reject):
            if has_reject:
                raise SieveRuntimeError(node.line, "reject given twice")
            if any(isinstance(a, FileInto | Vacation) for a in actions):
                raise SieveRuntimeError(node.line, "reject conflicts with an earlier keep, fileinto or vacation")
        elif has_reject and isinstance(action, FileInto | Vacation):
            raise SieveRuntimeError(node.line, f"{node.name} conflicts with an earlier reject")
        actions.append(action)

    def flags_of(self, tags: dict) -> tuple[str, ...]:
        """RFC 5232 §5: :flags replaces the internal variable for this one action."""
        if "flags" in tags:
            return tuple(_flag_list(self.ss(tags["flags"])))
        return tuple(self.flags)

    def redirect(self, node: Node) -> None:
        address = self.s(node.args[0]).strip()
        if address.startswith("<") and address.endswith(">"):
            address = address[1:-1]
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or any(c in address for c in " \t\r\n<>,"):
            raise SieveRuntimeError(node.line, f"redirect to an invalid address {address!r}")
        count = sum(isinstance(a, Redirect) for a in self.outcome.actions)
        if count >= self.env.max_redirects:
            raise SieveRuntimeError(node.line, f"more than {self.env.max_redirects} redirects (sieve.max_redirects)")
        if Redirect(address) not in self.outcome.actions:
            self.add(node, Redirect(address))
        if "copy" not in node.tags:
            self.outcome.implicit_keep = False

    def vacation_command(self, node: Node) -> None:
        if self.vacation:
            raise SieveRuntimeError(node.line, "vacation given twice")
        self.vacation = True
        tags = node.tags
        low, high = self.env.vacation_days
        given = tags.get("days")
        # RFC 5230 §4.1: 7 days unless given, within the site's minimum and maximum
        days = min(max(given if isinstance(given, int) else 7, low), high)
        reason = self.s(node.args[0])
        subject = self.s(tags["subject"]) if "subject" in tags else None
        sender = self.s(tags["from"]) if "from" in tags else None
        handle = self.s(tags["handle"]) if "handle" in tags else _default_handle(reason, subject, sender,
                                                                               "mime" in tags)
        addresses = tuple(self.ss(tags["addresses"])) if "addresses" in tags else ()
        self.add(node, Vacation(reason, days * 86400, subject, sender, addresses, "mime" in tags, handle))

    def flag_command(self, node: Node) -> None:
        """setflag/addflag/removeflag (RFC 5232 §4) on the internal variable or a named one."""
        if len(node.args) == 2:
            name = self.s(node.args[0]).lower()
            current = _flag_list([self.variables.get(name, "")])
            values = self.ss(node.args[1])
        else:
            name = ""
            current = list(self.flags)
            values = self.ss(node.args[0])
        given = _flag_list(values)
        if node.name == "setflag":
            current = given
        elif node.name == "addflag":
            current += [f for f in given if f.lower() not in {c.lower() for c in current}]
        else:
            drop = {f.lower() for f in given}
            current = [f for f in current if f.lower() not in drop]
        if name:
            self.variables[name] = " ".join(current)
        else:
            self.flags = current

    def modify(self, tags: dict, value: str) -> str:
        """RFC 5229 §4.1: the modifiers of ``set``, highest precedence first."""
        if "lower" in tags:
            value = value.lower()
        if "upper" in tags:
            value = value.upper()
        if "lowerfirst" in tags:
            value = value[:1].lower() + value[1:]
        if "upperfirst" in tags:
            value = value[:1].upper() + value[1:]
        if "quotewildcard" in tags:
            value = _WILDCARDS.sub(r"\\\1", value)
        if "length" in tags:
            value = str(len(value))
        return value

    # ------------------------------------------------------------------ tests

    def test(self, node: Node) -> bool:
        name = node.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(node.tests[0])
        if name == "allof":
            return all(self.test(t) for t in node.tests)
        if name == "anyof":
            return any(self.test(t) for t in node.tests)
        view = self.env.view
        if name == "exists":
            return all(view.raw_headers(h) for h in self.ss(node.args[0]))
        if name == "size":
            limit = int(node.args[0])  # type: ignore[arg-type]
            return view.size > limit if "over" in node.tags else view.size < limit
        if name == "mailboxexists":
            return all(self.env.mailbox_exists(m) for m in self.ss(node.args[0]))
        values, keys = self.values_and_keys(node)
        return self.compare(node, values, keys)

    def values_and_keys(self, node: Node) -> tuple[list[str], list[str]]:
        name, args, tags = node.name, node.args, node.tags
        view = self.env.view
        if name == "header":
            return [v for h in self.ss(args[0]) for v in view.headers(h)], self.ss(args[1])
        if name in ("address", "envelope"):
            part = next((p for p in ("localpart", "domain", "user", "detail") if p in tags), "all")
            if name == "address":
                found = [a for h in self.ss(args[0]) for a in view.addresses(h)]
            else:
                found = [a for e in self.ss(args[0]) for a in self.envelope(e.lower(), part)]
            values = [p for p in (address_part(a, part) if a else "" for a in found) if p is not None]
            return values, self.ss(args[1])
        if name == "hasflag":
            if len(args) == 2:
                flags = [f for v in self.ss(args[0]) for f in _flag_list([self.variables.get(v.lower(), "")])]
            else:
                flags = list(self.flags)
            return flags, self.ss(args[-1])
        if name == "body":
            if "raw" in tags:
                return [view.raw_body], self.ss(args[0])
            types = tuple(self.ss(tags["content"])) if "content" in tags else None
            return view.body_parts(types), self.ss(args[0])
        if name == "string":
            values = self.ss(args[0])
            if "count" in tags:
                values = [v for v in values if v]  # RFC 5229 §5: empty strings are not counted
            return values, self.ss(args[1])
        if name == "date":
            when = view.date(self.s(args[0]))
            if when is None:
                return [], []
            return self.date_part(when, tags, self.s(args[1])), self.ss(args[2])
        if name == "currentdate":
            return self.date_part(self.env.now, tags, self.s(args[0])), self.ss(args[1])
        raise SieveRuntimeError(node.line, f"test {name!r} is not implemented")

    def envelope(self, part_name: str, part: str) -> list[str]:
        view = self.env.view
        if part_name == "from":
            # RFC 5228 §5.4: the null reverse-path has no local part or domain, only the empty :all
            return [view.mail_from] if view.mail_from or part == "all" else []
        if part_name == "to":
            return [view.rcpt]
        return []

    def date_part(self, when: datetime, tags: dict, part: str) -> list[str]:
        if "originalzone" not in tags:
            zone = self.s(tags["zone"]) if "zone" in tags else None
            parsed = _zone(zone) if zone is not None else None
            if zone is not None and parsed is None:
                return []  # RFC 5260 §4.1: an invalid zone makes the test false
            when = when.astimezone(parsed) if parsed is not None else when.astimezone()
        value = _date_part(when, part.lower())
        return [value] if value is not None else []

    def compare(self, node: Node, values: list[str], keys: list[str]) -> bool:
        tags = node.tags
        match_type = next((m for m in ("is", "contains", "matches", "count", "value") if m in tags), "is")
        comparator = self.s(tags.get("comparator") or "i;ascii-casemap").lower()
        relation = tags.get(match_type) if match_type in ("count", "value") else None
        try:
            found, captures = match(match_type, comparator, str(relation).lower() if relation else None,
                                    values, keys)
        except SieveError as exc:
            raise SieveRuntimeError(node.line, exc.reason) from None
        if captures is not None and self.variables_on:
            self.captures = captures[:10]
        return found


def _flag_list(values: Sequence[str]) -> list[str]:
    """Flags from strings that may each hold several, space-separated (RFC 5232 §3), without duplicates."""
    out: list[str] = []
    for value in values:
        for flag in value.split():
            if flag.lower() not in {f.lower() for f in out}:
                out.append(flag)
    return out


def _default_handle(reason: str, subject: str | None, sender: str | None, mime: bool) -> str:
    """RFC 5230 §4.2: without :handle, replies with the same arguments count as the same vacation."""
    return hashlib.sha256(repr((reason, subject, sender, mime)).encode()).hexdigest()[:32]


def _zone(text: str) -> timezone | None:
    found = re.fullmatch(r"([+-])([0-9]{2})([0-9]{2})", text)
    if found is None:
        return None
    sign = -1 if found.group(1) == "-" else 1
    return timezone(sign * timedelta(hours=int(found.group(2)), minutes=int(found.group(3))))


_MJD_EPOCH = date(1858, 11, 17)  # RFC 5260 §4.2: "julian" is the Modified Julian Day


def _date_part(when: datetime, part: str) -> str | None:
    """RFC 5260 §4.2."""
    offset = when.utcoffset() or timedelta()
    minutes = int(offset.total_seconds()) // 60
    zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    formats = {
        "year": f"{when.year:04d}", "month": f"{when.month:02d}", "day": f"{when.day:02d}",
        "date": f"{when.year:04d}-{when.month:02d}-{when.day:02d}", "hour": f"{when.hour:02d}",
        "minute": f"{when.minute:02d}", "second": f"{when.second:02d}",
        "time": f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}",
        "zone": zone, "weekday": str((when.weekday() + 1) % 7),
    }
    if part in formats:
        return formats[part]
    if part == "julian":
        return str((when.date() - _MJD_EPOCH).days)
    if part == "iso8601":
        return when.isoformat()
    if part == "std11":
        return when.strftime("%a, %d %b %Y %H:%M:%S ") + zone
    return None
