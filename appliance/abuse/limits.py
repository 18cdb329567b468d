"""Per-client limits on every SMTP listener, as Postfix's anvil: concurrent sessions and the rates of
connections, messages, recipients and AUTH commands, per client IP and per network (/24, /64).

Over a limit the client gets ``421 4.7.0`` naming the limit, and the engine closes the connection (RFC 5321
§3.8: a 421 ends the session): at connect for the sessions and the connection rate, at MAIL, RCPT or AUTH for
the others. Clients in ``limits.exempt`` are never limited; a client in the relay networks counts against
``limits.relay`` alone, and an authenticated user's mail against ``limits.authenticated``, per login.

The counts live in a ``CountTable`` (counts.py) shared by every acceptor process; the sessions a process holds
are kept in ``SessionHolds``, which outlives the pipelines (a reload builds new checks on the same holds) and
releases a session when its connection ends.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable

from appliance.abuse.counts import AUTH, CONNECTIONS, MESSAGES, RECIPIENTS, CountTable
from appliance.config.model import Config, LimitSet
from appliance.pipeline.stages import Client, MailFrom, Pipeline, RcptTo, Result, Stage, Transaction, tempfail

log = logging.getLogger("appliance.abuse")

IP, NETWORK, USER = 1, 2, 3  # the kinds of keys
KNOWN_ADDRESSES = 8192  # client addresses whose keys are remembered (the memo starts afresh when full)
_IPV4_MAPPED = b"\0" * 10 + b"\xff\xff"
# What each counter is called in the reply and the log, and the key of its limit in a LimitSet.
_EVENTS = {CONNECTIONS: ("connections", "connection_rate"), MESSAGES: ("messages", "message_rate"),
           RECIPIENTS: ("recipients", "recipient_rate"), AUTH: ("AUTH commands", "auth_rate")}


def key_of(packed: bytes, kind: int, prefix: int) -> bytes:
    """A table key: 16 bytes (an IPv4 address as IPv4-mapped IPv6) and the tag."""
    if len(packed) == 4:
        packed = _IPV4_MAPPED + packed
    return packed + (kind << 8 | prefix).to_bytes(4, "little")


class SessionHolds:
    """The sessions this process holds in the table, by connection, until the connection ends.

    A connection is known by its peer address object, which the SMTP engine keeps for the connection's life
    (STARTTLS starts a new session on the same peer, and the session stays held).
    """

    def __init__(self, table: CountTable, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.clock = clock
        self._held: dict[int, tuple[object, tuple[bytes, ...]]] = {}

    def hold(self, client: object, keys: tuple[bytes, ...]) -> None:
        for key in keys:
            self.table.add_session(key, 1)
        connection = _connection(client)
        self._held[id(connection)] = (connection, keys)

    def ended(self, client: object) -> None:
        """The connection of `client` (an SMTP session) ended: its session is released (once)."""
        connection = _connection(client)
        held = self._held.get(id(connection))
        if held is None or held[0] is not connection:
            return
        del self._held[id(connection)]
        for key in held[1]:
            self.table.add_session(key, -1)


def _connection(client: object) -> object:
    """What stands for the connection: the SMTP session's peer (kept across STARTTLS), else the client."""
    return getattr(client, "peer", None) or client


class ClientLimits:
    """The checks of one pipeline (one config) over the shared holds."""

    def __init__(self, config: Config, holds: SessionHolds) -> None:
        limits = config.limits
        self.limits = limits
        self.holds = holds
        self.exempt = tuple(limits.exempt)
        relay = config.outgoing_gateway.relay_networks if config.outgoing_gateway is not None else ()
        self.relay = tuple(relay)
        self.window = limits.rate_window
        self._window_text = _duration(limits.rate_window)
        self._warned = False
        self._known: dict[str, tuple[tuple[bytes, LimitSet, str], ...]] = {}

    # ------------------------------------------------------------------ who counts against what

    def _keys(self, ip: str) -> tuple[tuple[bytes, LimitSet, str], ...]:
        """The keys `ip` counts against, each with its limits and how the reply names it; () when exempt.
        Remembered per address (the ipaddress module takes microseconds per question)."""
        keys = self._known.get(ip)
        if keys is None:
            if len(self._known) >= KNOWN_ADDRESSES:
                self._known.clear()
            keys = self._known[ip] = self._classify(ip)
        return keys

    def _classify(self, ip: str) -> tuple[tuple[bytes, LimitSet, str], ...]:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return ()
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr.version == net.version and addr in net for net in self.exempt):
            return ()
        full = addr.max_prefixlen
        own = key_of(addr.packed, IP, full)
        if any(addr.version == net.version and addr in net for net in self.relay):
            return ((own, self.limits.relay, f"relay client {addr}"),)
        prefix = self.limits.ipv4_prefix if addr.version == 4 else self.limits.ipv6_prefix
        network = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        return ((own, self.limits.client, f"your address {addr}"),
                (key_of(network.network_address.packed, NETWORK, prefix), self.limits.network,
                 f"your network {network}"))

    def _user_key(self, login: str) -> tuple[bytes, LimitSet, str]:
        digest = hashlib.blake2b(login.lower().encode("utf-8", "surrogateescape"), digest_size=16).digest()
        return key_of(digest, USER, 0), self.limits.authenticated, f"user {login}"

    # ------------------------------------------------------------------ the checks

    def connect(self, client: Client, transaction: None, argument: None) -> Result | None:
        keys = self._keys(client.ip)
        if not keys:
            return None
        table, now = self.holds.table, self.holds.clock()
        refusal = None
        for key, limits, who in keys:
            counted = table.hit(key, CONNECTIONS, now, self.window)
            if counted is None:
                self._full()
                continue
            sessions, rate = counted
            if refusal is None:
                if limits.sessions and sessions >= limits.sessions:
                    refusal = (f"Too many sessions from {who} (limit {limits.sessions})", "sessions", limits.sessions)
                elif limits.connection_rate and rate > limits.connection_rate:
                    refusal = self._rate_refusal(CONNECTIONS, limits.connection_rate, who)
        if refusal is not None:
            return self._refuse(client, refusal)
        self.holds.hold(client, tuple(key for key, _, _ in keys))
        return None

    def mail(self, client: Client, transaction: Transaction, sender: MailFrom) -> Result | None:
        return self._rate(client, MESSAGES)

    def rcpt(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Result | None:
        return self._rate(client, RECIPIENTS)

    def auth(self, client: Client, transaction: None, argument: None) -> Result | None:
        return self._rate(client, AUTH)

    def _rate(self, client: Client, counter: int) -> Result | None:
        keys = self._keys(client.ip)
        if not keys:
            return None
        if client.login and counter in (MESSAGES, RECIPIENTS):
            keys = (self._user_key(client.login),)
        table, now = self.holds.table, self.holds.clock()
        name = _EVENTS[counter][1]
        for key, limits, who in keys:
            counted = table.hit(key, counter, now, self.window)
            if counted is None:
                self._full()
                continue
            limit = getattr(limits, name)
            if limit and counted[1] > limit:
                return self._refuse(client, self._rate_refusal(counter, limit, who))
        return None

    # ------------------------------------------------------------------ replies

    def _rate_refusal(self, counter: int, limit: int, who: str) -> tuple[str, str, int]:
        event, name = _EVENTS[counter]
        return f"Too many {event} from {who} (limit {limit} per {self._window_text})", name, limit

    def _refuse(self, client: Client, refusal: tuple[str, str, int]) -> Result:
        text, name, limit = refusal
        log.info("client=%s refused: %s (limits %s %d)", client.ip, text, name, limit)
        return tempfail(f"421 4.7.0 {text}; try again later")

    def _full(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning("limits: the client table is full; clients it cannot count are not limited")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def register(pipeline: Pipeline, config: Config, holds: SessionHolds) -> None:
    """The limits' checks, first at each stage: they are cheap and spare the later checks a refused client."""
    checks = ClientLimits(config, holds)
    pipeline.register(Stage.CONNECT, checks.connect)
    pipeline.register(Stage.MAIL, checks.mail)
    pipeline.register(Stage.RCPT, checks.rcpt)
    pipeline.register(Stage.AUTH, checks.auth)
