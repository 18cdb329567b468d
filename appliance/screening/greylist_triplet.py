"""Greylisting's pure part: the triplet a delivery attempt is known by, and what its stored state decides.

The triplet is (client network, envelope sender, recipient), as postgrey keys it with --lookup-by-subnet: the
client's /24 (IPv4) or /64 (IPv6), because a sending site retries from another address of its pool; and the
sender with the parts that change from one message to the next taken out (BATV tags, SRS hashes and
timestamps, VERP numbers, +extensions), so that a mailing list's every message is one triplet, not a new one.

``decide`` reads the stored rows (no row, or a row as the store keeps it) and the time, and says whether the
attempt is greylisted and what to write; it does no I/O, so every path is tested with a plain clock value.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from appliance.config.model import GreylistConfig

IPV4_PREFIX = 24
IPV6_PREFIX = 64
NULL_SENDER = "<>"
# A last-seen time is written again only once it is older than this share of the lifetime (a day of the default
# 35): a passed triplet costs one write a day, not one per message, and expires at most that much early.
REFRESH_SHARE = 1 / 35

# BATV (draft-levine-smtp-batv-01 §4.1): prvs=TAG=local, where TAG is a key digit, a 3-digit day and 6 hex
# digits; some senders write prvs=local=TAG. Microsoft's msprvs1= is the same form; Barracuda's btv1==TAG==local.
_BATV = re.compile(r"^(?:prvs|msprvs1)=([^=]+)=(.+)$")
# A tag: the standard one, or a run of letters and digits with a digit in it (Microsoft's 19247ybjl).
_BATV_TAG = re.compile(r"^[0-9]{4}[0-9a-f]{6}$|^(?=[a-z]*[0-9])[0-9a-z]{8,12}$")
_BTV1 = re.compile(r"^btv1==[^=]*==(.+)$")
# SRS (Shevek's "Sender Rewriting Scheme", as libsrs2 writes it): SRS0=HASH=TT=orig-domain=orig-local@forwarder,
# and SRS1=HASH=first-forwarder==HASH=TT=orig-domain=orig-local@forwarder for a second hop.
_SRS0 = re.compile(r"^srs0[=+-][^=]*=[^=]*=([^=]+)=(.+)$")
_SRS1 = re.compile(r"^srs1[=+-][^=]*=[^=]*==[^=]*=[^=]*=([^=]+)=(.+)$")
_NUMBER = re.compile(r"\b\d+\b")


def client_network(ip: str) -> str:
    """The client's network as the triplet names it: 192.0.2.0/24, 2001:db8:1:2::/64 (an IPv4-mapped IPv6
    address counts as the IPv4 address); anything that is not an IP address is kept as it is."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = IPV4_PREFIX if addr.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def normalise_sender(address: str) -> str:
    """The envelope sender as the triplet keeps it: lower-cased, with BATV tags and SRS hashes taken out (SRS
    gives the original sender), then as postgrey does, the +extension dropped and every number that is a word of
    its own (VERP: bounce-1234-user) replaced by '#'. The null sender is ``<>``."""
    address = address.strip().lower()
    if address in ("", NULL_SENDER):
        return NULL_SENDER
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    srs = _SRS1.match(local) or _SRS0.match(local)
    if srs:
        local, domain = srs.group(2), srs.group(1)
    elif btv := _BTV1.match(local):
        local = btv.group(1)
    elif batv := _BATV.match(local):
        first, second = batv.group(1), batv.group(2)
        # the standard order is prvs=TAG=local; take the other part only when it alone looks like the tag
        local = first if _BATV_TAG.match(second) and not _BATV_TAG.match(first) else second
    local = local.split("+", 1)[0]
    return f"{_NUMBER.sub('#', local)}@{domain}"


def triplet_key(network: str, sender: str, recipient: str) -> str:
    """The key the store keeps a triplet under: network/sender/recipient, lower-cased."""
    return f"{network}/{normalise_sender(sender)}/{recipient.strip().lower()}"


@dataclass(frozen=True, slots=True)
class TripletRow:
    """A triplet as stored: when it was first seen (the greylisting started), when it was last seen (for a
    triplet not passed yet, the same), and whether a retry came late enough."""

    first: float
    seen: float
    passed: bool


@dataclass(frozen=True, slots=True)
class NetworkRow:
    """A client network's count of passed triplets (the auto-allow) and when it was last seen."""

    passes: int
    seen: float


class Write(enum.Enum):
    FIRST_SEEN = "first_seen"  # (re)start the triplet: first = seen = now, not passed
    PASSED = "passed"  # the triplet passed: passed, seen = now
    REFRESH = "refresh"  # the passed triplet was seen: seen = now
    COUNT_PASS = "count_pass"  # the network passed one more triplet (counted once per auto_allow_interval)
    REFRESH_NETWORK = "refresh_network"  # the auto-allowed network was seen: seen = now


@dataclass(frozen=True, slots=True)
class Change:
    """One write the store makes: what, and the triplet key or network it is about."""

    write: Write
    key: str


@dataclass(frozen=True, slots=True)
class Decision:
    greylisted: bool
    wait: float  # greylisted: seconds until a retry can pass
    reason: str  # for the log: new, early, retry window over, expired, passed, known, network auto-allowed
    changes: tuple[Change, ...] = ()


def decide(key: str, network: str, row: TripletRow | None, net: NetworkRow | None, now: float,
           config: GreylistConfig) -> Decision:
    """What the attempt of triplet ``key`` from ``network`` gets at time ``now``, given the stored rows."""
    refresh = config.lifetime * REFRESH_SHARE
    if config.auto_allow and net is not None and net.passes >= config.auto_allow and now - net.seen < config.lifetime:
        stale = now - net.seen >= refresh
        return Decision(False, 0.0, "network auto-allowed", (Change(Write.REFRESH_NETWORK, network),) if stale else ())
    if row is not None and row.passed and now - row.seen < config.lifetime:
        stale = now - row.seen >= refresh
        return Decision(False, 0.0, "known", (Change(Write.REFRESH, key),) if stale else ())
    restart = (Change(Write.FIRST_SEEN, key),)
    if row is None:
        return Decision(True, config.delay, "new", restart)
    if row.passed:
        return Decision(True, config.delay, "expired", restart)
    waited = now - row.first
    if waited < 0 or waited > config.retry_window:  # too late (or the clock went back): greylisting starts over
        return Decision(True, config.delay, "retry window over", restart)
    if waited < config.delay:
        return Decision(True, config.delay - waited, "early")
    changes = (Change(Write.PASSED, key), Change(Write.COUNT_PASS, network)) if config.auto_allow else (
        Change(Write.PASSED, key),)
    return Decision(False, 0.0, f"passed after {waited:.0f}s", changes)


def retry_text(wait: float) -> str:
    """'in 300 seconds' for the reply; at least one second."""
    seconds = max(1, int(wait + 0.999))
    return f"in {seconds} second{'s' if seconds != 1 else ''}"
