"""The MTA-STS TXT record and policy parsers (RFC 8461 §3.1, §3.2) and MX matching (§4.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.tlspolicy.mtasts import MAX_AGE_LIMIT, PolicyError, mx_matches, parse_policy, parse_txt

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"


def test_a_policy_parses_with_its_mx_patterns() -> None:
    policy = parse_policy(POLICY)
    assert (policy.mode, policy.max_age, policy.mx) == ("enforce", 86400, ("mail.example.com", "*.example.net"))
    assert policy.matches("MAIL.example.com.") and policy.matches("mx1.example.net")
    assert not policy.matches("example.net") and not policy.matches("a.b.example.net")


@pytest.mark.parametrize("text, what", [
    ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 60\n", "no mx"),
    ("version: STSv1\nmode: enforce\nmx: bad_host!\nmax_age: 60\n", "mx"),
    ("version: STSv1\nmode enforce\nmx: a.test\nmax_age: 60\n", "key: value"),
])
def test_a_broken_policy_is_sts_policy_invalid(text: str, what: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert caught.value.result_type == "sts-policy-invalid" and what in str(caught.value)


def test_mode_none_needs_no_mx_and_unknown_keys_are_ignored() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\nfuture: yes\n").mode == "none"


@pytest.mark.parametrize("records, expected", [
    (["v=STSv1; id=20260101T0000;"], "20260101T0000"),
    (["v=STSv1; id=2026-01-01"], None),  # "-" is not in an id
    (["v=STSv1; id=abc123"], "abc123"),
    (["v=STSv1; id=abc123;"], "abc123"),
    (["v=STSv1;id=x; ext=1"], "x"),
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # §3.1: several records: no policy
    (["v=spf1 -all", "v=STSv1; id=a"], "a"),  # other TXT records do not count
    (["v=STSv1"], None),
    (["v=STSv1; id=" + "a" * 33], None),
    (["v=STSv2; id=a"], None),
])
def test_txt_discovery(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


@given(st.text(max_size=300))
def test_any_text_parses_or_is_invalid(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        assert exc.result_type == "sts-policy-invalid"
    else:
        assert policy.mode in ("enforce", "testing", "none") and 0 <= policy.max_age <= MAX_AGE_LIMIT


@given(st.lists(st.text(max_size=80), max_size=4))
def test_any_txt_records_give_an_id_or_none(records: list[str]) -> None:
    found = parse_txt(records)
    assert found is None or (found.isalnum() and found.isascii() and len(found) <= 32)


_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z")


@given(st.lists(_label, min_size=2, max_size=4), _label)
def test_a_wildcard_matches_exactly_one_leading_label(labels: list[str], extra: str) -> None:
    domain = ".".join(labels)
    assert mx_matches(f"*.{domain}", f"{extra}.{domain}")
    assert not mx_matches(f"*.{domain}", domain)
    assert not mx_matches(f"*.{domain}", f"{extra}.{extra}.{domain}")
    assert mx_matches(domain, domain.upper() + ".")


@given(st.integers(min_value=0, max_value=MAX_AGE_LIMIT), st.sampled_from(["enforce", "testing"]))
def test_a_generated_valid_policy_round_trips(max_age: int, mode: str) -> None:
    policy = parse_policy(f"version: STSv1\nmode: {mode}\nmx: mx.example.org\nmax_age: {max_age}\n")
    assert (policy.mode, policy.max_age, policy.mx) == (mode, max_age, ("mx.example.org",))
