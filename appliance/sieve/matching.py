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
def _glob(pattern: str) -> tuple[str, ...]:
    """A :matches pattern as tokens: "*", "?", or one literal character (RFC 5228 §2.7.1: '\\' escapes)."""
    tokens = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            tokens.append("\\" + pattern[index + 1])
            index += 2
            continue
        tokens.append(char if char in "*?" else "\\" + char)
        index += 1
    return tuple(tokens)


def glob(pattern: str, text: str, fold: bool) -> list[str] | None:
    """The wildcards' captures when ``text`` matches ``pattern``, else None.

    Each '*' takes the shortest run that lets the rest match, leftmost first (RFC 5229 §3.2). Only the last
    '*' is ever extended on a mismatch (a literal run is always best matched at its first place), so the cost is
    at most len(pattern) x len(text): a script cannot make delivery backtrack exponentially, as a regular
    expression of '.*?' groups can."""
    tokens = _glob(pattern)
    subject = text.translate(_ASCII_LOWER) if fold else text
    spans: list[tuple[int, int]] = [(0, 0)] * len(tokens)
    p = t = 0
    star, star_t = -1, 0
    while t < len(subject):
        token = tokens[p] if p < len(tokens) else ""
        if token == "?" or (token[:1] == "\\" and _same(token[1], subject[t], fold)):
            spans[p] = (t, t + 1)
            p, t = p + 1, t + 1
        elif token == "*":
            star, star_t = p, t
            spans[p] = (t, t)
            p += 1
        elif star >= 0:
            star_t += 1
            spans[star] = (spans[star][0], star_t)
            p, t = star + 1, star_t
        else:
            return None
    while p < len(tokens) and tokens[p] == "*":
        spans[p] = (t, t)
        p += 1
    if p != len(tokens):
        return None
    return [text[a:b] for (a, b), token in zip(spans, tokens, strict=True) if token in ("*", "?")]


def _same(pattern_char: str, char: str, fold: bool) -> bool:
    return (pattern_char.translate(_ASCII_LOWER) if fold else pattern_char) == char


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
                found = glob(key, value, comparator == "i;ascii-casemap")
                if found is not None:
                    return True, [value, *found]
    return False, None
