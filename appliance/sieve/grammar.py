"""The Sieve grammar (RFC 5228 §8): a tokenizer and a recursive-descent parser, text in, a syntax tree out.

Written here rather than taken from sievelib (see README.md): the tree is the one the checker and the
interpreter walk, every error is one line with its line number, and the parser holds no state between calls.
The parser knows the grammar only; which commands, tags and extensions exist is the checker's business
(checker.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_DEPTH = 64  # nesting of blocks and tests; deeper is refused, not a RecursionError


class SieveError(ValueError):
    """A script that does not parse or check; str() is one line, "line N: what is wrong"."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class Tag:
    name: str  # without the colon, lower-cased (RFC 5228 §2.6.2: tags are case-insensitive)
    line: int


@dataclass(frozen=True)
class Number:
    value: int
    line: int


@dataclass(frozen=True)
class Strings:
    """A string or a string list (RFC 5228 §2.4.2.1): ``is_list`` tells which the script wrote."""

    values: tuple[str, ...]
    is_list: bool
    line: int


Argument = Tag | Number | Strings


@dataclass(frozen=True)
class Test:
    name: str
    args: tuple[Argument, ...]
    tests: tuple[Test, ...]
    line: int


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None  # None: the command ended with ";"
    line: int


# Tokens ------------------------------------------------------------------------------------------------------

_QUANTIFIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<bracket>/\*)
  | (?P<text>text:[ \t]*(?:\#[^\n]*)?\r?\n)
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+[KkMmGg]?)
  | (?P<quote>")
  | (?P<punct>[\[\](),{};])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str  # ident, tag, number, string, punct, end
    value: str | int
    line: int


def tokenize(text: str) -> list[_Token]:
    """The tokens of ``text`` (RFC 5228 §8.1), comments and white space dropped."""
    tokens: list[_Token] = []
    pos, line, end = 0, 1, len(text)
    while pos < end:
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SieveError(line, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup
        if kind == "bracket":
            close = text.find("*/", pos + 2)
            if close < 0:
                raise SieveError(line, "unterminated /* comment")
            line += text.count("\n", pos, close)
            pos = close + 2
            continue
        if kind == "quote":
            value, new_pos = _quoted(text, pos + 1, line)
            tokens.append(_Token("string", value, line))
            line += text.count("\n", pos, new_pos)
            pos = new_pos
            continue
        if kind == "text":
            value, new_pos = _multiline(text, match.end(), line)
            tokens.append(_Token("string", value, line))
            line += text.count("\n", pos, new_pos)
            pos = new_pos
            continue
        word = match.group()
        if kind == "number":
            digits = word.rstrip("KkMmGg")
            value_n = int(digits) * _QUANTIFIERS[word[len(digits):].lower()]
            if value_n >= 1 << 63:
                raise SieveError(line, f"number {word} is too large")
            tokens.append(_Token("number", value_n, line))
        elif kind == "tag":
            tokens.append(_Token("tag", word[1:].lower(), line))
        elif kind == "ident":
            tokens.append(_Token("ident", word.lower(), line))
        elif kind == "punct":
            tokens.append(_Token("punct", word, line))
        line += word.count("\n")
        pos = match.end()
    tokens.append(_Token("end", "", line))
    return tokens


def _quoted(text: str, pos: int, line: int) -> tuple[str, int]:
    """A quoted string from just after its opening quote: (value, position after the closing quote).

    RFC 5228 §2.4.2: backslash-quote and backslash-backslash are escapes; any other backslash is dropped."""
    out: list[str] = []
    end = len(text)
    while pos < end:
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < end:
            out.append(text[pos + 1])
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise SieveError(line, "unterminated string")


def _multiline(text: str, pos: int, line: int) -> tuple[str, int]:
    """A ``text:`` string from its first line: ends at a line holding only "."; ".." starts a line with "."."""
    out: list[str] = []
    while True:
        nl = text.find("\n", pos)
        if nl < 0:
            raise SieveError(line, "unterminated text: string (no line with a single '.')")
        raw = text[pos:nl + 1]
        body = raw.rstrip("\r\n")
        if body == ".":
            return "".join(out), nl + 1
        if body.startswith(".."):
            raw = raw[1:]
        out.append(raw.replace("\r\n", "\n").replace("\n", "\r\n"))
        pos = nl + 1


# Parser ------------------------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, punct: str) -> _Token:
        token = self.take()
        if token.kind != "punct" or token.value != punct:
            raise SieveError(token.line, f"expected '{punct}' but found {_describe(token)}")
        return token

    def is_punct(self, punct: str) -> bool:
        token = self.peek()
        return token.kind == "punct" and token.value == punct

    def commands(self, depth: int, closing: bool) -> tuple[Command, ...]:
        out: list[Command] = []
        while True:
            token = self.peek()
            if token.kind == "end":
                if closing:
                    raise SieveError(token.line, "missing '}' at the end of the script")
                return tuple(out)
            if closing and self.is_punct("}"):
                return tuple(out)
            out.append(self.command(depth))

    def command(self, depth: int) -> Command:
        token = self.take()
        if token.kind != "ident":
            raise SieveError(token.line, f"expected a command but found {_describe(token)}")
        args, tests = self.arguments(depth)
        if self.is_punct(";"):
            self.take()
            return Command(str(token.value), args, tests, None, token.line)
        if self.is_punct("{"):
            if depth >= MAX_DEPTH:
                raise SieveError(token.line, f"blocks nested deeper than {MAX_DEPTH}")
            self.take()
            block = self.commands(depth + 1, closing=True)
            self.expect("}")
            return Command(str(token.value), args, tests, block, token.line)
        raise SieveError(self.peek().line, f"expected ';' or '{{' after {token.value} but found "
                                           f"{_describe(self.peek())}")

    def arguments(self, depth: int) -> tuple[tuple[Argument, ...], tuple[Test, ...]]:
        args: list[Argument] = []
        while True:
            token = self.peek()
            if token.kind == "tag":
                self.take()
                args.append(Tag(str(token.value), token.line))
            elif token.kind == "number":
                self.take()
                args.append(Number(int(token.value), token.line))
            elif token.kind == "string" or self.is_punct("["):
                args.append(self.strings())
            else:
                break
        if depth >= MAX_DEPTH:
            raise SieveError(self.peek().line, f"tests nested deeper than {MAX_DEPTH}")
        if self.peek().kind == "ident":
            return tuple(args), (self.test(depth + 1),)
        if self.is_punct("("):
            self.take()
            tests = [self.test(depth + 1)]
            while self.is_punct(","):
                self.take()
                tests.append(self.test(depth + 1))
            self.expect(")")
            return tuple(args), tuple(tests)
        return tuple(args), ()

    def test(self, depth: int) -> Test:
        token = self.take()
        if token.kind != "ident":
            raise SieveError(token.line, f"expected a test but found {_describe(token)}")
        args, tests = self.arguments(depth)
        return Test(str(token.value), args, tests, token.line)

    def strings(self) -> Strings:
        token = self.take()
        if token.kind == "string":
            return Strings((str(token.value),), False, token.line)
        values = [self.string()]
        while self.is_punct(","):
            self.take()
            values.append(self.string())
        self.expect("]")
        return Strings(tuple(values), True, token.line)

    def string(self) -> str:
        token = self.take()
        if token.kind != "string":
            raise SieveError(token.line, f"expected a string but found {_describe(token)}")
        return str(token.value)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the script"
    if token.kind == "string":
        return "a string"
    if token.kind == "number":
        return f"number {token.value}"
    if token.kind == "tag":
        return f"tag ':{token.value}'"
    return f"'{token.value}'"


def parse_tree(text: str) -> tuple[Command, ...]:
    """The commands of ``text``, or SieveError; grammar only (no check of names or argument types)."""
    return _Parser(tokenize(text)).commands(0, closing=False)
