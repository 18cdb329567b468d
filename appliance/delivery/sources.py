"""Where an outbound connection leaves from: the interface between the delivery client and a pool of sending
addresses (the outgoing gateway's egress pool, appliance/egress/, passed in by the composition root).

The client asks the pool for the address of each new connection, tells it every refusal a peer gave and every
source address the host could not bind; the pool decides which addresses are healthy. Without a pool the client
binds delivery.source_addresses, as before.
"""

from __future__ import annotations

import socket
from typing import Protocol

from appliance.config.model import EgressAddress

# RFC 3463 X.4.0 (other network or routing status): the attempt never left this host because no sending
# address is healthy. A result with this text is marked `held`: it never runs a recipient's lifetime out.
NO_HEALTHY_SOURCE = "no healthy sending address"


# The address a connection is bound to, and the name it gives in EHLO (helo None: the host name). The pool's
# own config entries serve: egress/ sits beside delivery/ and cannot share a class of its own with it.
Source = EgressAddress


class SendingAddresses(Protocol):
    """A pool of sending addresses, as the delivery client uses it."""

    @property
    def families(self) -> frozenset[socket.AddressFamily]:
        """The address families the pool has addresses of; a peer of another family is not reachable."""
        ...

    def pick(self, family: socket.AddressFamily, destination: str) -> Source | None:
        """The address a new connection of `family` to `destination` leaves from; None when none is healthy."""
        ...

    def observe(self, address: str, destination: str, reply: str) -> bool:
        """A refusal ("code enhanced text") that `destination` gave a connection from `address`. True when it
        says that the address itself is blocked: the client then defers the recipients instead of bouncing
        them, so that the next attempt may leave from a healthy address."""
        ...

    def bind_failed(self, address: str, error: OSError) -> None:
        """The host could not bind `address` (EADDRNOTAVAIL: it is not an address of this host)."""
        ...
