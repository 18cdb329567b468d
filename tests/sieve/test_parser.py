"""The Sieve grammar and checker (RFC 5228 §8, with the extensions this server announces): what a user sees when
a script is refused (ManageSieve's PUTSCRIPT answer, the delivery log), and that no input makes them crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.sieve import EXTENSIONS, SieveError, check, parse


def test_a_script_with_every_construct_parses() -> None:
    script = parse(
        'require ["fileinto", "imap4flags", "variables", "relational", "comparator-i;ascii-numeric"];\r\n'
        "# a comment\r\n"
        "/* a bracket\r\n comment */\r\n"
        'if allof (header :contains "subject" ["a", "b"], not size :over 1M) {\r\n'
        '  fileinto :flags "\\\\Seen" "Lists";\r\n'
        '} elsif header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" {\r\n'
        "  discard; stop;\r\n"
        "} else {\r\n"
        '  set "t" text:\r\n'
        "line one\r\n"
        "..dot\r\n"
        ".\r\n"
        "  ;\r\n"
        "}\r\n")
    assert [node.name for node in script.commands] == ["if", "elsif", "else"]
    size = script.commands[0].tests[0].tests[1].tests[0]
    assert size.name == "size" and size.args == (1 << 20,) and "over" in size.tags
    assert script.commands[2].block[0].args == ("t", "line one\r\n.dot\r\n")  # type: ignore[index]
    assert "fileinto" in script.requires


@pytest.mark.parametrize(("text", "error"), [
    ('require "fileinto";\n\nfileinot "x";', "line 3: unknown command 'fileinot'"),
    ('fileinto "x";', 'line 1: fileinto needs require "fileinto"'),
    ('require "nosuch";', "line 1: unsupported extension 'nosuch' in require"),
    ('keep;\nrequire "fileinto";', "line 2: require must come before every other command"),
    ("if true { keep; }\nelse keep;", "line 2: else takes no test"),
    ('if header :is "a" { keep; }', "line 1: header takes string list, string list"),
    ('if header :bogus "a" "b" { keep; }', "line 1: unknown tag ':bogus' for header"),
    ('if header :is :contains "a" "b" { keep; }', "line 1: tag ':contains' conflicts with ':is'"),
    ('if size 10 { keep; }', "line 1: size needs one of :over, :under"),
    ('if header :comparator "i;nope" "a" "b" { keep; }', "line 1: unknown comparator 'i;nope'"),
    ('redirect ["a@b", "c@d"];', "line 1: redirect takes string"),
    ('keep', "line 1: expected ';' or '{' after keep but found the end of the script"),
    ('if true { keep;', "line 1: missing '}' at the end of the script"),
    ('"open', "line 1: unterminated string"),
    ('else { keep; }', "line 1: else without a preceding if"),
    ('require "vacation";\nvacation :days "x" "away";', "line 2: tag ':days' of vacation needs a number"),
    ('if not true keep;', "line 1: true takes no test"),
])
def test_errors_name_the_line_and_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(SieveError) as caught:
        check(text)
    assert str(caught.value) == error


def test_the_capability_list_is_what_require_accepts() -> None:
    check("require [" + ", ".join(f'"{name}"' for name in EXTENSIONS) + "];")
    assert "fileinto" in EXTENSIONS and "vacation" in EXTENSIONS and "ereject" in EXTENSIONS


def test_nesting_is_bounded_with_an_error_not_a_crash() -> None:
    deep = "if true { " * 200 + "keep;" + " }" * 200
    with pytest.raises(SieveError, match="nested deeper"):
        check(deep)
    with pytest.raises(SieveError, match="nested deeper"):
        check("if " + "not " * 500 + "true { keep; }")


_PIECES = list('abcdefirquz":;{}[](),# \r\n*/\\.0123456789KMG') + [
    "text:", "if ", "require ", "fileinto", ":is ", ":over ", "header", "not ", "allof", "true", "keep", "stop"]


@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join) | st.text(max_size=40))
def test_any_input_parses_or_gives_one_line_error(text: str) -> None:
    try:
        parse(text)
    except SieveError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("line ")


_STRINGS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(st.lists(st.tuples(st.lists(_STRINGS, min_size=1, max_size=3), st.lists(_STRINGS, min_size=1, max_size=3),
                          _STRINGS), max_size=4))
def test_strings_come_back_as_written(rules: list[tuple[list[str], list[str], str]]) -> None:
    """Round trip: a script written from random header names, keys and folders parses back to those values."""
    lines = ['require "fileinto";']
    for names, keys, folder in rules:
        lines.append(f"if header :contains [{', '.join(map(_quote, names))}] "
                     f"[{', '.join(map(_quote, keys))}] {{ fileinto {_quote(folder)}; }}")
    script = parse("\n".join(lines))
    assert len(script.commands) == len(rules)
    for node, (names, keys, folder) in zip(script.commands, rules, strict=True):
        assert node.tests[0].args == (tuple(names), tuple(keys))
        assert node.block[0].args == (folder,)  # type: ignore[index]
