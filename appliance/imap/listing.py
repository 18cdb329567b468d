"""LIST and LSUB: which names are listed and with which attributes (RFC 3501 §6.3.8-9, RFC 5258,
RFC 6154). Pure functions over the folder and subscription lists; the session only writes them out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from appliance.imap.parser import ListCommand
from appliance.store import DELIMITER, FolderInfo


def entries(cmd: ListCommand, lsub: bool, folders: dict[str, FolderInfo],
            subscribed: set[str]) -> Iterator[tuple[str, list[str], str]]:
    """(name, attributes, suffix such as CHILDINFO) for every name the command lists, in name order."""
    by_subscription = lsub or "SUBSCRIBED" in cmd.selection
    candidates = subscribed if by_subscription else set(folders)
    parents = {p for name in candidates for p in ancestors(name)} - candidates
    patterns = [(p, pattern(cmd.reference, p)) for p in cmd.patterns]
    for name in sorted(candidates | parents):
        matched = [p for p, regex in patterns if regex.fullmatch(name)]
        if not matched:
            continue
        found = entry(cmd, lsub, name, name in candidates, matched, folders, subscribed,
                      [regex for _, regex in patterns])
        if found is not None:
            yield name, found[0], found[1]


def entry(cmd: ListCommand, lsub: bool, name: str, candidate: bool, matched: list[str],
          folders: dict[str, FolderInfo], subscribed: set[str],
          regexes: list[re.Pattern[str]]) -> tuple[list[str], str] | None:
    """Attributes (and CHILDINFO) for one listed name, or None when it is not listed."""
    exists = name in folders
    wildcard = any("%" in p or "*" in p for p in matched)
    subscribed_child = any(s.startswith(name + DELIMITER) for s in subscribed)
    if not candidate:  # a parent that only has (subscribed) children
        if lsub:
            # RFC 3501 §6.3.9: "%" matching a non-subscribed parent of subscribed names
            return (["\\Noselect"], "") if any("%" in p for p in matched) else None
        if "RECURSIVEMATCH" in cmd.selection:
            # RFC 5258 §3.5: listed for a subscribed descendant the patterns do not list themselves
            # (as Dovecot): a pattern list that names the child too needs no CHILDINFO on the parent
            prefix = name + DELIMITER
            if not any(s.startswith(prefix) and not any(r.fullmatch(s) for r in regexes) for s in subscribed):
                return None
            attrs = ["\\NonExistent"] if not exists else []
            if "CHILDREN" in cmd.returns:
                attrs.append("\\HasChildren")
            return attrs, ' (CHILDINFO ("SUBSCRIBED"))'
        if "SUBSCRIBED" in cmd.selection or cmd.selection or not wildcard:
            return None
        return (["\\NonExistent" if cmd.extended else "\\Noselect", "\\HasChildren"], "")
    folder = folders.get(name)
    if "SPECIAL-USE" in cmd.selection and not (folder and folder.special_use):
        return None
    attrs = []
    if folder is None:
        attrs.append("\\NonExistent" if cmd.extended else "\\Noselect")
    elif not lsub and (not cmd.extended or "CHILDREN" in cmd.returns):
        # LSUB has no CHILDREN attributes; extended LIST only on RETURN (CHILDREN) (RFC 5258 §4)
        has_children = any(n.startswith(name + DELIMITER) for n in folders)
        attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
    show_use = not cmd.extended or "SPECIAL-USE" in cmd.returns or "SPECIAL-USE" in cmd.selection
    if folder is not None and folder.special_use and show_use:  # RFC 6154 §2
        attrs.append(folder.special_use)
    if name in subscribed and ("SUBSCRIBED" in cmd.returns or "SUBSCRIBED" in cmd.selection):
        attrs.insert(0, "\\Subscribed")  # first, where Dovecot puts it
    suffix = ""
    if "RECURSIVEMATCH" in cmd.selection and subscribed_child:
        suffix = ' (CHILDINFO ("SUBSCRIBED"))'  # RFC 5258 §3.5
    return attrs, suffix


def ancestors(name: str) -> list[str]:
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURNS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def options_problem(cmd: ListCommand) -> str | None:
    """RFC 5258 §3: unknown options and a RECURSIVEMATCH without a base option are BAD."""
    if cmd.selection - LIST_SELECTION:
        return "Invalid LIST selection options"
    if "RECURSIVEMATCH" in cmd.selection and not cmd.selection - {"RECURSIVEMATCH", "REMOTE"}:
        return "RECURSIVEMATCH needs another selection option"
    if {r for r in cmd.returns if not r.startswith("STATUS:")} - LIST_RETURNS:
        return "Invalid LIST return options"
    return None


def pattern(reference: str, pattern: str) -> re.Pattern[str]:
    """LIST reference + mailbox pattern -> regex; "*" any, "%" no delimiter (RFC 3501 §6.3.8)."""
    full = pattern if pattern.startswith(DELIMITER) or not reference else reference + pattern
    if full.upper().startswith("INBOX") and (len(full) == 5 or full[5] in (DELIMITER, "*", "%")):
        full = "INBOX" + full[5:]
    regex = "".join(
        ".*" if ch == "*" else f"[^{re.escape(DELIMITER)}]*" if ch == "%" else re.escape(ch) for ch in full
    )
    return re.compile(regex, re.S)
