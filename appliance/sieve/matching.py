"""Comparators (RFC 4790, RFC 5228 §2.7.3) and match types (:is :contains :matches, RFC 5231 :count/:value).

``match`` answers whether any value matches any key and, for :matches, what the wildcards captured (the match
variables of RFC 5229 §3.2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from appliance.sieve.grammar import SieveError

_INFINITY = float("inf")


def _fold(comparator: str, text: str) -> str:
    """i;ascii-casemap folds only ASCII letters (RFC 4790 §9.2); i;octet compares as it is."""
    if comparator == "i;ascii-casemap":
        return text.translate(_ASCII_LOWER)
    return text


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def numeric(text: str) -> float:
    """i;ascii-numeric (RFC 4790 §9.1): the leading digits as a number; no leading digit is positive infinity."""
    digits = re.match(r"[0-9]*", text).group()  # type: ignore[union-attr]
    return int(digits) if digits else _INFINITY


def _compare(comparator: str, value: str, key: str) -> int:
    if comparator == "i;ascii-numeric":
        left, right = numeric(value), numeric(key)
    else:
        left, right = _fold(comparator, value), _fold(comparator, key)  # type: ignore[assignment]
    return (left > right) - (left < right)


_RELATIONS = {"gt": lambda c: c > 0, "ge": lambda c: c >= 0, "lt": lambda c: c < 0, "le": lambda c: c <= 0,
              "eq": lambda c: c == 0, "ne": lambda c: c != 0}


@lru_cache(maxsize=512)
def _glob(pattern: str, fold: bool) -> re.Pattern[str]:
    """A :matches pattern as a regular expression: '*' any run, '?' one character, '\\' escapes (RFC 5228 §2.7.1).

    Each wildcard is a group (the match variables ${1}...); '*' is non-greedy, as RFC 5229 §3.2 asks ("the
    shortest match for each wildcard, leftmost first")."""
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        out.append("(.*?)" if char == "*" else "(.)" if char == "?" else re.escape(char))
        index += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE | re.ASCII if fold else 0))


def match(match_type: str, comparator: str, relation: str | None, values: Sequence[str],
          keys: Sequence[str]) -> tuple[bool, list[str] | None]:
    """(whether the test is true, the captures of a :matches that matched, else None)."""
    if match_type == "count":
        count = str(len(values))
        return any(_RELATIONS[relation or "eq"](_compare(comparator, count, key)) for key in keys), None
    for value in values:
        for key in keys:
            if match_type == "is":
                if _compare(comparator, value, key) == 0:
                    return True, None
            elif match_type == "value":
                if _RELATIONS[relation or "eq"](_compare(comparator, value, key)):
                    return True, None
            elif match_type == "contains":
                if comparator == "i;ascii-numeric":
                    raise SieveError(0, "comparator i;ascii-numeric cannot be used with :contains")
                if _fold(comparator, key) in _fold(comparator, value):
                    return True, None
            else:
                if comparator == "i;ascii-numeric":
                    raise SieveError(0, "comparator i;ascii-numeric cannot be used with :matches")
                found = _glob(key, comparator == "i;ascii-casemap").fullmatch(value)
                if found is not None:
                    return True, [value, *found.groups()]
    return False, None
