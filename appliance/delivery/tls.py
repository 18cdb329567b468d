"""What TLS a delivery must get from each host: the interface the TLS policies (tlspolicy/) implement.

delivery/ cannot import tlspolicy/ (same floor), so the policies reach the Deliverer as a ``TLSPolicies``
given by the composition root. The Deliverer asks it once per destination; ``None`` means no policy and
keeps the opportunistic TLS of before (Postfix's ``may``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# RFC 8460 §4.3 result types the Deliverer itself sees (the policies name the others)
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
VALIDATION_FAILURE = "validation-failure"


class TLSOutcome(Protocol):
    """Why a session did not get the TLS its policy asks for, in RFC 8460 terms (§4.3 result type)."""

    @property
    def result_type(self) -> str: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class TLSFailure:
    """A TLSOutcome the Deliverer itself finds (no STARTTLS, a failed handshake)."""

    result_type: str
    reason: str


class HostTLS(Protocol):
    """The TLS one MX host must give.

    ``required``: no plaintext; no STARTTLS or a failed handshake skips the host. ``enforced``: a failed
    ``verify`` skips the host too (MTA-STS testing mode reports it and delivers anyway). ``refused``: the host
    is never used (its TLSA lookup failed, RFC 7672 §2.2). ``report`` receives each session's outcome.
    """

    @property
    def required(self) -> bool: ...

    @property
    def enforced(self) -> bool: ...

    @property
    def refused(self) -> TLSOutcome | None: ...

    def verify(self, chain: Sequence[bytes]) -> TLSOutcome | None:
        """Check the chain as the server sent it (DER, leaf first); None when it passes."""
        ...

    def report(self, failure: TLSOutcome | None, receiving_ip: str) -> None:
        """The session's outcome (None: success), for TLS-RPT."""
        ...


class DomainTLS(Protocol):
    """The TLS of one destination: per MX name its requirement (None: opportunistic). An MX name missing
    from ``hosts`` is not used (MTA-STS enforce, RFC 8461 §4.1)."""

    @property
    def hosts(self) -> Mapping[str, HostTLS | None]: ...


class TLSPolicies(Protocol):
    """The TLS policies (MTA-STS, DANE) of delivery."""

    async def for_domain(self, domain: str, mx_hosts: Sequence[str], port: int) -> DomainTLS | None:
        """What each MX of `domain` requires; None when the domain has no policy."""
        ...


def peer_chain(ssl_object: Any) -> tuple[bytes, ...]:
    """The certificates the server sent (DER, leaf first), unverified.

    Python 3.11 exposes the sent chain only through the internal ``_sslobj.get_unverified_chain()`` (public
    as ``SSLObject.get_unverified_chain`` from 3.13); it is guarded, and without it the chain is the leaf
    alone (DANE-EE still works, DANE-TA then fails for want of the TA certificate: never a pass).
    """
    if ssl_object is None:
        return ()
    for holder in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        getter = getattr(holder, "get_unverified_chain", None)
        if getter is None:
            continue
        try:
            chain = getter() or []
            return tuple(c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                         for c in chain)
        except (AttributeError, ValueError, TypeError) as exc:
            logging.getLogger("appliance.delivery").warning("cannot read the server's certificate chain: %s", exc)
            break
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()
