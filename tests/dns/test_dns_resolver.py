"""The resolver against a real BIND named on loopback: MX order, implicit MX, null MX, NXDOMAIN, failures."""

from __future__ import annotations

import pytest
from peers.named import free_port

from appliance.dns.resolver import DNSTemporaryError, MXHost, NoSuchDomain, NullMX, Resolver

ZONE = """
multi      IN MX 20 mx2.multi
multi      IN MX 10 mx1.multi
multi      IN MX 30 mx3.multi
mx1.multi  IN A 127.0.0.11
mx2.multi  IN A 127.0.0.12
mx3.multi  IN A 127.0.0.13
equal      IN MX 10 a.equal
equal      IN MX 10 b.equal
equal      IN MX 10 c.equal
equal      IN MX 5 best.equal
implicit   IN A 127.0.0.21
implicit   IN AAAA ::1
v6only     IN AAAA ::1
nullmx     IN MX 0 .
textonly   IN TXT "no mail here"
dual       IN A 127.0.0.22
dual       IN AAAA ::1
"""


@pytest.fixture
def named(named_factory):
    return named_factory({"mailfleet.test": ZONE})


async def test_mx_hosts_ordered_by_preference(named) -> None:
    hosts = await named.resolver().mx_hosts("multi.mailfleet.test")
    assert hosts == [
        MXHost(10, "mx1.multi.mailfleet.test"),
        MXHost(20, "mx2.multi.mailfleet.test"),
        MXHost(30, "mx3.multi.mailfleet.test"),
    ]


async def test_equal_preferences_are_shuffled_but_stay_after_better_ones(named) -> None:
    resolver = named.resolver()
    orders = set()
    for _ in range(40):
        hosts = await resolver.mx_hosts("equal.mailfleet.test")
        assert hosts[0] == MXHost(5, "best.equal.mailfleet.test")
        assert {h.preference for h in hosts[1:]} == {10}
        orders.add(tuple(h.host for h in hosts[1:]))
    # RFC 5321 §5.1: random among equal preference; 40 draws of 6 orders all equal has odds 6**-39.
    assert len(orders) > 1


async def test_implicit_mx_from_address_records(named) -> None:
    resolver = named.resolver()
    assert await resolver.mx_hosts("implicit.mailfleet.test") == [MXHost(0, "implicit.mailfleet.test")]
    assert await resolver.mx_hosts("v6only.mailfleet.test") == [MXHost(0, "v6only.mailfleet.test")]


async def test_null_mx_raises(named) -> None:
    with pytest.raises(NullMX, match="nullmx.mailfleet.test"):
        await named.resolver().mx_hosts("nullmx.mailfleet.test")


async def test_nxdomain_is_permanent(named) -> None:
    with pytest.raises(NoSuchDomain, match="NXDOMAIN"):
        await named.resolver().mx_hosts("nosuch.mailfleet.test")


async def test_name_without_mx_or_address_is_permanent(named) -> None:
    with pytest.raises(NoSuchDomain, match="no MX, A or AAAA"):
        await named.resolver().mx_hosts("textonly.mailfleet.test")


async def test_refused_zone_is_temporary(named) -> None:
    # named is authoritative only for mailfleet.test and does not recurse: REFUSED -> retry later.
    with pytest.raises(DNSTemporaryError):
        await named.resolver().mx_hosts("elsewhere.test")


async def test_dead_nameserver_is_temporary() -> None:
    port = free_port(["127.0.0.1"])
    resolver = Resolver(["127.0.0.1"], port=port, timeout=0.5)
    with pytest.raises(DNSTemporaryError):
        await resolver.mx_hosts("multi.mailfleet.test")


async def test_addresses_family_order(named) -> None:
    v4_first = named.resolver(prefer_ipv6=False)
    v6_first = named.resolver(prefer_ipv6=True)
    assert await v4_first.addresses("dual.mailfleet.test") == ["127.0.0.22", "::1"]
    assert await v6_first.addresses("dual.mailfleet.test") == ["::1", "127.0.0.22"]
    assert await v4_first.addresses("mx1.multi.mailfleet.test") == ["127.0.0.11"]


async def test_addresses_of_missing_host_is_permanent(named) -> None:
    with pytest.raises(NoSuchDomain):
        await named.resolver().addresses("gone.mailfleet.test")
    assert await named.resolver().addresses("textonly.mailfleet.test") == []


async def test_ip_literals_need_no_dns() -> None:
    resolver = Resolver(["127.0.0.1"], port=free_port(["127.0.0.1"]), timeout=0.5)
    assert await resolver.addresses("[127.0.0.9]") == ["127.0.0.9"]
    assert await resolver.addresses("[IPv6:::1]") == ["::1"]
