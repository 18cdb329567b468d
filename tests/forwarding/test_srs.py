"""The SRS addresses themselves: round trip, tampering, case folding, age, and agreement with srslib (an
independent implementation of libsrs2's scheme)."""

from __future__ import annotations

import pytest
import srslib
from hypothesis import given
from hypothesis import strategies as st

from appliance.forwarding.srs import DAY, SRS, SenderRewrite, SRSError, is_srs

SECRET = "a-long-enough-secret-0123"
NOW = 20_000 * DAY + 3600.0

local_parts = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-_=",
                      min_size=1, max_size=30).filter(lambda s: not is_srs(s))
domains = st.from_regex(r"\A[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}\Z")


def srs(now: float = NOW, secrets: tuple[str, ...] = (SECRET,)) -> SRS:
    return SRS(secrets, 21 * DAY, clock=lambda: now)


@given(local_parts, domains)
def test_reverse_undoes_forward(local: str, domain: str) -> None:
    address = srs().forward(f"{local}@{domain}", "fwd.test")
    assert address.startswith("SRS0=") and address.endswith("@fwd.test")
    assert srs().reverse(address) == f"{local}@{domain}"


@given(local_parts, domains)
def test_case_changed_on_the_way_still_reverses(local: str, domain: str) -> None:
    address = srs().forward(f"{local}@{domain}", "fwd.test")
    assert srs().reverse(address.lower()).lower() == f"{local}@{domain}".lower()
    assert srs().reverse(address.upper()).lower() == f"{local}@{domain}".lower()


@given(local_parts, domains, st.data())
def test_any_changed_character_is_detected(local: str, domain: str, data: st.DataObject) -> None:
    address = srs().forward(f"{local}@{domain}", "fwd.test")
    at = address.rindex("@")
    i = data.draw(st.integers(5, at - 1))
    new = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789").filter(
        lambda c: c.lower() != address[i].lower()))
    tampered = address[:i] + new + address[i + 1:]
    with pytest.raises(SRSError):
        srs().reverse(tampered)


@given(st.text(max_size=40))
def test_garbage_is_refused_with_a_reason(text: str) -> None:
    try:
        srs().reverse(f"{text}@fwd.test")
    except SRSError as exc:
        assert exc.reason
    else:  # only a correctly signed address reverses; a random one almost never is
        pytest.fail(f"{text!r} reversed")


def test_age_is_checked_against_max_age() -> None:
    address = srs(NOW - 20 * DAY).forward("dave@sender.test", "fwd.test")
    assert srs().reverse(address) == "dave@sender.test"
    old = srs(NOW - 22 * DAY).forward("dave@sender.test", "fwd.test")
    with pytest.raises(SRSError, match="expired"):
        srs().reverse(old)


def test_every_secret_verifies_and_the_first_signs() -> None:
    old = srs(secrets=("the-old-secret-0123456",)).forward("dave@sender.test", "fwd.test")
    rotated = srs(secrets=(SECRET, "the-old-secret-0123456"))
    assert rotated.reverse(old) == "dave@sender.test"
    assert srs().reverse(rotated.forward("dave@sender.test", "fwd.test")) == "dave@sender.test"
    with pytest.raises(SRSError, match="hash does not match"):
        srs().reverse(old)


def test_a_short_hash_is_refused_not_compared_on_fewer_characters() -> None:
    address = srs().forward("dave@sender.test", "fwd.test")
    hash_, rest = address[5:].split("=", 1)
    with pytest.raises(SRSError, match="too short"):
        srs().reverse(f"SRS0={hash_[:1]}={rest}")


def test_srs0_of_another_forwarder_becomes_srs1_and_back() -> None:
    first = srs(secrets=("first-hop-secret-0123456",)).forward("dave@sender.test", "first.test")
    second = srs().forward(first, "fwd.test")
    assert second.startswith("SRS1=") and "=first.test==" in second
    assert srs().reverse(second) == first
    third = srs(secrets=("third-hop-secret-0123456",)).forward(second, "third.test")
    assert srs(secrets=("third-hop-secret-0123456",)).reverse(third) == first


@given(local_parts, domains)
def test_srslib_reverses_ours_and_we_reverse_srslib(local: str, domain: str) -> None:
    theirs = srslib.SRS(SECRET)
    ours = SRS((SECRET,))
    assert theirs.reverse(ours.forward(f"{local}@{domain}", "fwd.test")) == f"{local}@{domain}"
    assert ours.reverse(theirs.forward(f"{local}@{domain}", "fwd.test")) == f"{local}@{domain}"
    srs1 = theirs.forward(theirs.forward(f"{local}@{domain}", "a.test"), "b.test")
    assert ours.reverse(srs1) == theirs.reverse(srs1)


def test_sender_rewrite_only_for_what_an_alias_sent_outside() -> None:
    rewrite = SenderRewrite(srs(), "home.test", {"home.test", "other.test"}.__contains__)
    forwarded = rewrite("dave@sender.test", "bob@home.test", "carol@outside.test")
    assert srs().reverse(forwarded) == "dave@sender.test" and forwarded.endswith("@home.test")
    assert rewrite("", "bob@home.test", "carol@outside.test") == ""  # the null sender
    assert rewrite("alice@other.test", "bob@home.test", "carol@outside.test") == "alice@other.test"
    assert rewrite("dave@sender.test", "carol@outside.test", "carol@outside.test") == "dave@sender.test"
