"""The checks' parts against a real BIND, without the SMTP engine: hostile DKIM signatures and keys, SPF's
results beyond pass and fail, iprev's cases."""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest
from peers.named import start_named
from senderauth.test_senderauth_e2e import RSA_PEM, _message, _rsa_public, _signed, _txt

from appliance.config.model import DNSConfig
from appliance.senderauth import iprev
from appliance.senderauth.resolver import Lookups
from appliance.senderauth.signatures import MAX_SIGNATURES, Verifier
from appliance.senderauth.spfcheck import SpfChecker

ZONES = {
    "sender.test": f"rsa._domainkey IN TXT {_txt('v=DKIM1; k=rsa; p=' + _rsa_public())}\n"
                   'broken._domainkey IN TXT "v=DKIM1; k=rsa; p=bm90IGEga2V5"\n'
                   '@ IN TXT "v=spf1 ip4:127.0.35.1 ~all"\n'
                   'perm IN TXT "v=spf1 ip4:127.0.35.1 bogus -all"\n'
                   'loop IN TXT "v=spf1 include:loop.sender.test -all"\n'
                   "mail IN A 127.0.35.1\nother IN A 127.0.35.99\nmulti IN A 127.0.35.4\n",
    "35.0.127.in-addr.arpa": "1 IN PTR mail.sender.test.\n4 IN PTR other.sender.test.\n"
                             "4 IN PTR multi.sender.test.\n5 IN PTR other.sender.test.\n",
}


@pytest.fixture
def lookups(tmp_path: Path):
    named = start_named(tmp_path / "named", ZONES)
    found = Lookups(DNSConfig(nameservers=(named.address,), port=named.port, timeout=2.0))
    yield found
    named.stop()


def _signed_as(selector: bytes, message: bytes) -> bytes:
    return dkim.sign(message, selector, b"sender.test", RSA_PEM, include_headers=[b"from"]) + message


async def test_hostile_signatures_and_keys_get_their_own_result(lookups: Lookups) -> None:
    message = _message("bob@sender.test", "hostile")
    good = _signed(message)
    garbled = b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=rsa; h=from; bh=x\r\n"  # no b=
    data = garbled + _signed_as(b"gone", _signed_as(b"broken", good))
    results, chain = await Verifier(lookups).verify(data, arc=True)
    assert [(r.result, r.selector) for r in results] == [
        ("neutral", "rsa"), ("permerror", "gone"), ("permerror", "broken"), ("pass", "rsa")]
    assert "no key" in results[1].reason and "is not a key" in results[2].reason
    assert chain is not None and chain.result == "none"
    await lookups.close()


async def test_no_more_than_the_limit_of_signatures_is_checked(lookups: Lookups) -> None:
    data = _message("bob@sender.test", "many")
    for _ in range(MAX_SIGNATURES + 3):
        data = _signed(data)
    results, _ = await Verifier(lookups).verify(data, arc=False)
    assert len(results) == MAX_SIGNATURES and {r.result for r in results} == {"pass"}
    await lookups.close()


async def test_spf_softfail_permerror_and_a_name_that_is_not_a_domain(lookups: Lookups) -> None:
    spf = SpfChecker(lookups)
    assert (await spf.mail_from("127.0.35.2", "bob@sender.test", "x")).result == "softfail"
    assert (await spf.mail_from("127.0.35.1", "bob@perm.sender.test", "x")).result == "permerror"
    assert (await spf.mail_from("127.0.35.1", "bob@loop.sender.test", "x")).result == "permerror"
    assert (await spf.helo("127.0.35.1", "localhost")).result == "none"
    assert (await spf.helo("127.0.35.1", "[127.0.35.1]")).result == "none"
    null = await spf.mail_from("127.0.35.2", "", "sender.test")  # RFC 7208 §2.4: postmaster@HELO
    assert (null.result, null.identity, null.domain) == ("softfail", "mailfrom", "sender.test")
    await lookups.close()


async def test_iprev_passes_on_any_confirmed_name_only(lookups: Lookups) -> None:
    assert await iprev.check(lookups, "127.0.35.1") == iprev.IprevResult("pass", "mail.sender.test")
    assert await iprev.check(lookups, "::ffff:127.0.35.1") == iprev.IprevResult("pass", "mail.sender.test")
    assert (await iprev.check(lookups, "127.0.35.4")).name == "multi.sender.test"  # one of two names confirms
    assert (await iprev.check(lookups, "127.0.35.5")).result == "fail"  # other.sender.test is 127.0.35.99
    assert (await iprev.check(lookups, "127.0.35.6")).result == "fail"  # no PTR
