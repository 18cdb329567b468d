"""The Sender Rewriting Scheme (Shevek's "Guarded" scheme, as libsrs2 and postsrsd write it).

A forwarder that sends a message on with its original envelope sender fails SPF at the destination. It sends it
from ``SRS0=HHHH=TT=domain=local@srsdomain`` instead: TT is the day of the rewrite (days since the epoch mod 1024,
two base32 characters), HHHH the first four base64 characters of HMAC-SHA1(secret, TT+domain+local), lower-cased
before hashing (MTAs that change case must not break it). A bounce to that address is verified (hash, age) and
sent on to local@domain. An SRS0 address of another forwarder becomes ``SRS1=HHHH=host==HHHH=TT=domain=local``,
whose bounce goes back to that forwarder. Written here rather than taken from srslib: see README.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DAY = 86400.0
TIME_SLOTS = 1024  # the timestamp wraps after 1024 days (10 bits)
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HASH_LENGTH = 4  # libsrs2's default; a shorter hash in an address is refused, not compared on fewer characters
_SEPARATORS = "=+-"  # libsrs2 reads all three after SRS0/SRS1, and writes "="


class SRSError(ValueError):
    """An address that does not reverse: ``reason`` names what failed (for the 550 reply and the log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_srs(local: str) -> bool:
    """Whether a local part has the shape of an SRS address (SRS0 or SRS1 and a separator): cheap, no check."""
    return len(local) > 5 and local[:3].lower() == "srs" and local[3] in "01" and local[4] in _SEPARATORS


def timestamp(now: float) -> str:
    """Today's two-character SRS timestamp."""
    day = int(now // DAY) % TIME_SLOTS
    return _BASE32[day >> 5] + _BASE32[day & 31]


def _age_days(stamp: str, now: float) -> int:
    """Days since `stamp` was written (modulo the 1024-day wrap, as libsrs2 reads it)."""
    upper = stamp.upper()
    if len(upper) != 2 or any(c not in _BASE32 for c in upper):
        raise SRSError(f"malformed timestamp {stamp!r}")
    then = _BASE32.index(upper[0]) << 5 | _BASE32.index(upper[1])
    return (int(now // DAY) - then) % TIME_SLOTS


def _hash(secret: str, *parts: str) -> str:
    digest = hmac.new(secret.encode(), "".join(parts).lower().encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()[:HASH_LENGTH]


@dataclass(frozen=True)
class SRS:
    """Rewrites with the first secret, verifies with every one (a rotation keeps the old secret a while)."""

    secrets: tuple[str, ...]
    max_age: float = 21 * DAY
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        if not self.secrets:
            raise ValueError("SRS needs at least one secret")

    def forward(self, sender: str, domain: str) -> str:
        """The address `sender` is rewritten to when this host forwards its mail as `domain`."""
        local, _, host = sender.rpartition("@")
        if not local or not host:
            raise SRSError(f"{sender!r} is not local@domain")
        if is_srs(local) and local[3] == "1":
            # A third hop: the bounce still goes to the first forwarder; only the hash is ours.
            first, opaque = _srs1_parts(local)
            return f"SRS1={_hash(self.secrets[0], first, opaque)}={first}={opaque}@{domain}"
        if is_srs(local):
            opaque = local[4:]  # the separator and all after it, as the first forwarder wrote it
            return f"SRS1={_hash(self.secrets[0], host, opaque)}={host}={opaque}@{domain}"
        stamp = timestamp(self.clock())
        return f"SRS0={_hash(self.secrets[0], stamp, host, local)}={stamp}={host}={local}@{domain}"

    def reverse(self, address: str) -> str:
        """Where a bounce to `address` goes: the original sender (SRS0) or the first forwarder (SRS1). Raises
        SRSError naming what failed: the shape, the hash, or the age."""
        local = address.rpartition("@")[0]
        if not is_srs(local):
            raise SRSError("not an SRS address")
        if local[3] == "1":
            first, opaque = _srs1_parts(local)
            self._check_hash(local[5:].split("=", 1)[0], first, opaque)
            return f"SRS0{opaque}@{first}"
        fields = local[5:].split("=", 3)
        if len(fields) != 4 or not all(fields):
            raise SRSError("malformed SRS0 address (expected SRS0=hash=time=domain=local)")
        given, stamp, host, original = fields
        self._check_hash(given, stamp, host, original)
        age = _age_days(stamp, self.clock())
        if age * DAY > self.max_age:
            raise SRSError(f"expired ({age} days old, the limit is {self.max_age / DAY:g})")
        return f"{original}@{host}"

    def _check_hash(self, given: str, *parts: str) -> None:
        if len(given) < HASH_LENGTH:
            raise SRSError("hash too short")
        # Compared case-insensitively, as libsrs2 does: some MTAs change the case of local parts.
        want = given.lower().encode()
        if not any(hmac.compare_digest(_hash(secret, *parts).lower().encode(), want) for secret in self.secrets):
            raise SRSError("hash does not match (forged, or signed with a secret this host no longer has)")


def _srs1_parts(local: str) -> tuple[str, str]:
    """(first forwarder's domain, its opaque part with the leading separator) of an SRS1 local part."""
    fields = local[5:].split("=", 2)
    if len(fields) != 3 or not fields[0] or not fields[1] or not fields[2] or fields[2][0] not in _SEPARATORS:
        raise SRSError("malformed SRS1 address (expected SRS1=hash=domain==...)")
    return fields[1], fields[2]


@dataclass(frozen=True)
class SenderRewrite:
    """Which sender a forwarded copy leaves with: the SRS address for a recipient an alias or catch-all expanded
    to a remote address, the original otherwise. The null sender and our own domains (SPF passes already) stay
    as they are. `own(domain)` says whether a domain is one of this host's."""

    srs: SRS
    domain: str
    own: Callable[[str], bool]

    def __call__(self, mail_from: str, original: str, address: str) -> str:
        if not mail_from or not original or original.lower() == address.lower():
            return mail_from
        local, _, host = mail_from.rpartition("@")
        host = host.lower()
        if not local or host == self.domain or self.own(host) or local.startswith('"'):
            return mail_from  # a quoted local part would not survive inside the SRS address: sent as it is
        return self.srs.forward(mail_from, self.domain)


def srs_domain_address(address: str, domain: str) -> bool:
    """Whether `address` is an SRS address at `domain` (the RCPT test before a reverse)."""
    local, _, host = address.rpartition("@")
    return host.lower() == domain and is_srs(local)
