"""What a parsed Sieve script means: every command and test checked against its signature, bound into ``Node``s.

RFC 5228 §2.10.6 and §3.2: a script that uses an extension it did not ``require``, names an unknown command,
test, tag or comparator, or gives an argument of the wrong type is refused as a whole, before it runs (the
ManageSieve PUTSCRIPT check and the load of global scripts both use this). The interpreter walks only ``Node``s,
whose tags and positional arguments are already sorted out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.sieve.grammar import Argument, Command, Number, SieveError, Strings, Tag, Test, parse_tree

# The SIEVE capability (RFC 5804 §1.7): what ``require`` accepts and ManageSieve announces.
EXTENSIONS: tuple[str, ...] = (
    "fileinto", "reject", "ereject", "envelope", "body", "copy", "imap4flags", "variables", "relational",
    "subaddress", "date", "vacation", "mailbox", "comparator-i;ascii-numeric",
)
# RFC 5228 §2.7.3: these two are always there; a script may still require them.
_REQUIRABLE = frozenset(EXTENSIONS) | {"comparator-i;octet", "comparator-i;ascii-casemap"}
COMPARATORS = ("i;ascii-casemap", "i;octet", "i;ascii-numeric")
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")  # RFC 5231 §4

# Argument kinds: "string" (one string), "strings" (a string or a list), "number".
_MATCH = {"is": (None, None), "contains": (None, None), "matches": (None, None),
          "count": ("relational", "string"), "value": ("relational", "string")}
_COMPARATOR = {"comparator": (None, "string")}
_ADDRESS_PART = {"all": (None, None), "localpart": (None, None), "domain": (None, None),
                 "user": ("subaddress", None), "detail": ("subaddress", None)}
_GROUPS = (frozenset(_MATCH), frozenset(_ADDRESS_PART), frozenset({"over", "under"}),
           frozenset({"raw", "content", "text"}), frozenset({"zone", "originalzone"}))


@dataclass(frozen=True)
class _Spec:
    ext: str | None
    tags: dict[str, tuple[str | None, str | None]]  # tag: (extension it needs, kind of its value or None)
    positional: tuple[tuple[str, ...], ...]  # the accepted shapes of positional arguments
    tests: str = "none"  # none, one, list
    block: bool = False
    required_tags: frozenset[str] = frozenset()


_COMMANDS: dict[str, _Spec] = {
    "require": _Spec(None, {}, (("strings",),)),
    "if": _Spec(None, {}, ((),), "one", True),
    "elsif": _Spec(None, {}, ((),), "one", True),
    "else": _Spec(None, {}, ((),), "none", True),
    "stop": _Spec(None, {}, ((),)),
    "keep": _Spec(None, {"flags": ("imap4flags", "strings")}, ((),)),
    "discard": _Spec(None, {}, ((),)),
    "fileinto": _Spec("fileinto", {"copy": ("copy", None), "create": ("mailbox", None),
                                   "flags": ("imap4flags", "strings")}, (("string",),)),
    "redirect": _Spec(None, {"copy": ("copy", None)}, (("string",),)),
    "reject": _Spec("reject", {}, (("string",),)),
    "ereject": _Spec("ereject", {}, (("string",),)),
    "setflag": _Spec("imap4flags", {}, (("strings",), ("string", "strings"))),
    "addflag": _Spec("imap4flags", {}, (("strings",), ("string", "strings"))),
    "removeflag": _Spec("imap4flags", {}, (("strings",), ("string", "strings"))),
    "set": _Spec("variables", {name: (None, None) for name in (
        "lower", "upper", "lowerfirst", "upperfirst", "quotewildcard", "length")}, (("string", "string"),)),
    "vacation": _Spec("vacation", {"days": (None, "number"), "subject": (None, "string"),
                                   "from": (None, "string"), "addresses": (None, "strings"),
                                   "mime": (None, None), "handle": (None, "string")}, (("string",),)),
}
_TESTS: dict[str, _Spec] = {
    "address": _Spec(None, {**_COMPARATOR, **_MATCH, **_ADDRESS_PART}, (("strings", "strings"),)),
    "envelope": _Spec("envelope", {**_COMPARATOR, **_MATCH, **_ADDRESS_PART}, (("strings", "strings"),)),
    "header": _Spec(None, {**_COMPARATOR, **_MATCH}, (("strings", "strings"),)),
    "exists": _Spec(None, {}, (("strings",),)),
    "size": _Spec(None, {"over": (None, None), "under": (None, None)}, (("number",),),
                  required_tags=frozenset({"over", "under"})),
    "true": _Spec(None, {}, ((),)),
    "false": _Spec(None, {}, ((),)),
    "not": _Spec(None, {}, ((),), "one"),
    "allof": _Spec(None, {}, ((),), "list"),
    "anyof": _Spec(None, {}, ((),), "list"),
    "hasflag": _Spec("imap4flags", {**_COMPARATOR, **_MATCH}, (("strings",), ("strings", "strings"))),
    "body": _Spec("body", {**_COMPARATOR, **_MATCH, "raw": (None, None), "content": (None, "strings"),
                           "text": (None, None)}, (("strings",),)),
    "string": _Spec("variables", {**_COMPARATOR, **_MATCH}, (("strings", "strings"),)),
    "date": _Spec("date", {**_COMPARATOR, **_MATCH, "zone": (None, "string"), "originalzone": (None, None)},
                  (("string", "string", "strings"),)),
    "currentdate": _Spec("date", {**_COMPARATOR, **_MATCH, "zone": (None, "string")},
                         (("string", "strings"),)),
    "mailboxexists": _Spec("mailbox", {}, (("strings",),)),
}
DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601",
              "std11", "zone", "weekday")


@dataclass(frozen=True)
class Node:
    """A checked command or test: tags by name (their value, or None for a bare tag), positional values."""

    name: str
    tags: dict[str, str | int | tuple[str, ...] | None]
    args: tuple[str | int | tuple[str, ...], ...]
    tests: tuple[Node, ...]
    block: tuple[Node, ...] | None
    line: int


@dataclass(frozen=True)
class Script:
    """A checked script: its commands and the extensions it required."""

    commands: tuple[Node, ...]
    requires: frozenset[str] = field(default_factory=frozenset)


def parse(text: str) -> Script:
    """The checked script of ``text``, or SieveError (one line, with the line number)."""
    tree = parse_tree(text)
    requires: set[str] = set()
    body_start = 0
    for command in tree:
        if command.name != "require":
            break
        _check_require(command, requires)
        body_start += 1
    return Script(_commands(tree[body_start:], frozenset(requires)), frozenset(requires))


def check(text: str) -> None:
    """Raise SieveError when ``text`` is not a script this server runs (ManageSieve's PUTSCRIPT/CHECKSCRIPT)."""
    parse(text)


def _check_require(command: Command, requires: set[str]) -> None:
    node = _bind(command.name, command.args, _COMMANDS["require"], command.line, _REQUIRABLE)
    if command.tests or command.block is not None:
        raise SieveError(command.line, "require takes only a string list and ends with ';'")
    for name in node.args[0]:  # type: ignore[union-attr]
        if name.lower() not in _REQUIRABLE:
            raise SieveError(command.line, f"unsupported extension {name!r} in require")
        requires.add(name.lower())


def _commands(commands: tuple[Command, ...], requires: frozenset[str]) -> tuple[Node, ...]:
    out: list[Node] = []
    previous = ""
    for command in commands:
        name = command.name
        if name == "require":
            raise SieveError(command.line, "require must come before every other command")
        spec = _COMMANDS.get(name)
        if spec is None:
            raise SieveError(command.line, f"unknown command {name!r}")
        if name in ("elsif", "else") and previous not in ("if", "elsif"):
            raise SieveError(command.line, f"{name} without a preceding if")
        _needs(spec, name, command.line, requires)
        node = _bind(name, command.args, spec, command.line, requires)
        tests = _tests(command.tests, spec, name, command.line, requires)
        if spec.block and command.block is None:
            raise SieveError(command.line, f"{name} needs a block {{ ... }}")
        if not spec.block and command.block is not None:
            raise SieveError(command.line, f"{name} takes no block; end it with ';'")
        block = _commands(command.block, requires) if command.block is not None else None
        _semantics(node, requires)
        out.append(Node(name, node.tags, node.args, tests, block, command.line))
        previous = name
    return tuple(out)


def _tests(tests: tuple[Test, ...], spec: _Spec, name: str, line: int, requires: frozenset[str]) -> tuple[
        Node, ...]:
    if spec.tests == "none" and tests:
        raise SieveError(line, f"{name} takes no test")
    if spec.tests == "one" and len(tests) != 1:
        raise SieveError(line, f"{name} needs exactly one test")
    if spec.tests == "list" and not tests:
        raise SieveError(line, f"{name} needs a list of tests")
    return tuple(_test(test, requires) for test in tests)


def _test(test: Test, requires: frozenset[str]) -> Node:
    spec = _TESTS.get(test.name)
    if spec is None:
        raise SieveError(test.line, f"unknown test {test.name!r}")
    _needs(spec, test.name, test.line, requires)
    node = _bind(test.name, test.args, spec, test.line, requires)
    tests = _tests(test.tests, spec, test.name, test.line, requires)
    _semantics(node, requires)
    return Node(test.name, node.tags, node.args, tests, None, test.line)


def _needs(spec: _Spec, name: str, line: int, requires: frozenset[str]) -> None:
    if spec.ext is not None and spec.ext not in requires:
        raise SieveError(line, f'{name} needs require "{spec.ext}"')


def _bind(name: str, args: tuple[Argument, ...], spec: _Spec, line: int, requires: frozenset[str]) -> Node:
    """Sort ``args`` into tags and positional values, checking each against ``spec``."""
    tags: dict[str, str | int | tuple[str, ...] | None] = {}
    positional: list[Argument] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not isinstance(arg, Tag):
            positional.append(arg)
            continue
        if positional:
            raise SieveError(arg.line, f"tag ':{arg.name}' of {name} must come before its other arguments")
        if arg.name not in spec.tags:
            raise SieveError(arg.line, f"unknown tag ':{arg.name}' for {name}")
        ext, kind = spec.tags[arg.name]
        if ext is not None and ext not in requires:
            raise SieveError(arg.line, f':{arg.name} needs require "{ext}"')
        if arg.name in tags:
            raise SieveError(arg.line, f"tag ':{arg.name}' given twice to {name}")
        for group in _GROUPS:
            if arg.name in group and group & tags.keys():
                raise SieveError(arg.line, f"tag ':{arg.name}' conflicts with ':{min(group & tags.keys())}'")
        value: str | int | tuple[str, ...] | None = None
        if kind is not None:
            if index >= len(args) or not _fits(args[index], kind):
                raise SieveError(arg.line, f"tag ':{arg.name}' of {name} needs a {_kind_name(kind)}")
            value = _value(args[index], kind)
            index += 1
        tags[arg.name] = value
    for shape in spec.positional:
        if len(shape) == len(positional) and all(_fits(a, k) for a, k in zip(positional, shape, strict=True)):
            values = tuple(_value(a, k) for a, k in zip(positional, shape, strict=True))
            break
    else:
        wanted = " or ".join(", ".join(_kind_name(k) for k in shape) or "no arguments" for shape in spec.positional)
        raise SieveError(line, f"{name} takes {wanted}")
    if spec.required_tags and not spec.required_tags & tags.keys():
        raise SieveError(line, f"{name} needs one of " + ", ".join(f":{t}" for t in sorted(spec.required_tags)))
    return Node(name, tags, values, (), None, line)


def _fits(arg: Argument, kind: str) -> bool:
    if kind == "number":
        return isinstance(arg, Number)
    if kind == "string":
        return isinstance(arg, Strings) and not arg.is_list
    return isinstance(arg, Strings)


def _value(arg: Argument, kind: str) -> str | int | tuple[str, ...]:
    """A number, a string, or (kind "strings") always a tuple, whether the script wrote a list or not."""
    if isinstance(arg, Number):
        return arg.value
    assert isinstance(arg, Strings)
    return arg.values if kind == "strings" else arg.values[0]


def _kind_name(kind: str) -> str:
    return {"number": "number", "string": "string", "strings": "string list"}[kind]


def _has_variables(value: str, requires: frozenset[str]) -> bool:
    return "variables" in requires and "${" in value


def _semantics(node: Node, requires: frozenset[str]) -> None:
    """The checks beyond argument types: comparators, relations, date parts, variable names."""
    comparator = node.tags.get("comparator")
    if isinstance(comparator, str) and not _has_variables(comparator, requires):
        if comparator.lower() not in COMPARATORS:
            raise SieveError(node.line, f"unknown comparator {comparator!r}")
        if comparator.lower() == "i;ascii-numeric" and "comparator-i;ascii-numeric" not in requires:
            raise SieveError(node.line, 'comparator "i;ascii-numeric" needs require "comparator-i;ascii-numeric"')
    for relational in ("count", "value"):
        relation = node.tags.get(relational)
        if isinstance(relation, str) and relation.lower() not in RELATIONS:
            raise SieveError(node.line, f"unknown relation {relation!r} for :{relational} (one of "
                                        + ", ".join(RELATIONS) + ")")
    if node.name in ("date", "currentdate"):
        part = node.args[-2]
        if isinstance(part, str) and not _has_variables(part, requires) and part.lower() not in DATE_PARTS:
            raise SieveError(node.line, f"unknown date part {part!r}")
    if node.name == "set":
        variable = str(node.args[0])
        if not variable or not all(c.isalnum() or c in "_." for c in variable) or variable[0].isdigit():
            raise SieveError(node.line, f"invalid variable name {variable!r}")
