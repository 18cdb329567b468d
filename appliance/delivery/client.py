"""Outbound SMTP delivery: MX or explicit-host routing, failover, opportunistic STARTTLS, per-recipient results.

Built on aiosmtplib's connection and command layer; the transaction (which replies are final, which fail
over to the next host, what each recipient's outcome is) is decided here, so that one connection carries all
the recipients the caller grouped for one destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

import aiosmtplib
from aiosmtplib.errors import (
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
)

from appliance.config.model import DeliveryConfig
from appliance.delivery.mime_downgrade import CannotDowngrade, downgrade_to_7bit
from appliance.delivery.pipelining import lend_transport
from appliance.delivery.shaping import Shaper
from appliance.delivery.sources import NO_HEALTHY_SOURCE, SendingAddresses, Source
from appliance.delivery.tls import (
    STARTTLS_NOT_SUPPORTED,
    VALIDATION_FAILURE,
    HostTLS,
    TLSFailure,
    TLSOutcome,
    TLSPolicies,
    peer_chain,
)
from appliance.dns.resolver import (
    DNSError,
    DNSTemporaryError,
    NoSuchDomain,
    NullMX,
    Resolver,
    address_family,
    interface_addresses,
    ip_literal,
)
from appliance.message.lines import has_bare_cr_or_lf

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


@dataclass(frozen=True)
class RcptResult:
    """The outcome for one recipient. `remote_host` is None when we decided locally (DNS, connection)."""

    code: int
    enhanced: str
    text: str
    remote_host: str | None = None
    held: bool = False  # no healthy sending address: the attempt never left, the lifetime does not run out
    retry_after: float | None = None  # a temporary result: the wall-clock time worth trying again (shaping)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        where = f" (from {self.remote_host})" if self.remote_host else ""
        return f"{self.code} {self.enhanced} {self.text}{where}"


@dataclass(frozen=True)
class MXTarget:
    """Deliver by MX lookup of `domain` (an address literal like "[192.0.2.1]" goes to that address)."""

    domain: str
    port: int = 25


@dataclass(frozen=True)
class HostsTarget:
    """Deliver to these (host, port) pairs in order, failing over: backup MX -> primaries, smarthost."""

    hosts: tuple[tuple[str, int], ...]


Target = MXTarget | HostsTarget


def reply_result(code: int, message: str, remote_host: str | None) -> RcptResult:
    """A RcptResult from an SMTP reply, splitting off the RFC 3463 enhanced code when the peer sent one."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    match = _ENHANCED.match(text)
    if match and match.group(1) == str(code)[0]:
        enhanced = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
        text = text[match.end() :]
    else:
        enhanced = f"{str(code)[0]}.0.0" if 200 <= code < 600 else "4.0.0"
    return RcptResult(code, enhanced, text, remote_host)


def _refused_to_talk(code: int, message: str, remote: str) -> RcptResult:
    """A greeting or HELO refusal is a deferral, not a bounce: another MX or a later try may take the mail
    (Postfix's smtp_skip_5xx_greeting). The peer's detail is kept in the 4.x.x enhanced code."""
    reply = reply_result(code, message, remote)
    detail = reply.enhanced.split(".", 1)[1]
    return RcptResult(
        421 if code >= 500 else code, f"4.{detail}", f"{remote} refused to talk to me: {code} {reply.text}", remote
    )


def _local(code: int, enhanced: str, text: str, remote_host: str | None = None) -> RcptResult:
    return RcptResult(code, enhanced, text, remote_host)


@dataclass
class _Hop:
    """One host to try, with the name used for SNI and logs."""

    name: str
    port: int
    addresses: list[str] | None = None  # resolved lazily unless loop detection needed them
    tls: HostTLS | None = None  # what its TLS policy requires; None: opportunistic


class _Failover(Exception):
    """The session failed before any final answer: try the next address with the same recipients."""

    def __init__(self, result: RcptResult) -> None:
        super().__init__(str(result))
        self.result = result


class _BindFailed(Exception):
    """The pool's source address cannot be bound on this host (EADDRNOTAVAIL)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _TLSFailed(Exception):
    """The TLS handshake failed; the connection is gone. Opportunistic TLS retries in plaintext."""


class _TLSRequired(Exception):
    """A host whose policy requires TLS did not give it (no STARTTLS, failed verification)."""

    def __init__(self, failure: TLSOutcome) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@dataclass
class _Message:
    """What the transaction needs to know about the message and envelope."""

    mail_from: str
    data: bytes
    eight_bit: bool
    needs_utf8: bool  # the whole message needs SMTPUTF8 (sender or headers are UTF-8, or the caller says so)
    utf8_rcpts: frozenset[str] = field(default_factory=frozenset)
    known: Framing = field(default_factory=lambda: Framing())
    destination: str = ""  # the domain the egress pool counts refusals by (set only with a pool)
    shaping_key: str | None = None  # the shaper's destination, told each session's outcome
    tls_report: bool = False  # a TLS-RPT report: no TLS policy applies to it (RFC 8460 §3)


@dataclass(frozen=True)
class Framing:
    """What the caller already checked about the message's lines, so that DATA need not look again."""

    crlf_only: bool = False  # every line ends with CRLF (the SMTP listener refuses others)
    dot_free: bool = False  # no line starts with "." (nothing to dot-stuff, RFC 5321 §4.5.2)


class _DestinationLimits:
    """One semaphore per destination (address, port), dropped when unused so the map stays small."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[tuple[str, int], tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, key: tuple[str, int]) -> AsyncIterator[None]:
        sem, users = self._slots.get(key, (asyncio.Semaphore(self._limit), 0))
        self._slots[key] = (sem, users + 1)
        try:
            async with sem:
                yield
        finally:
            sem, users = self._slots[key]
            if users <= 1:
                del self._slots[key]
            else:
                self._slots[key] = (sem, users - 1)


def _header_section(data: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0:
            return data[:idx]
    return data


def _opportunistic_tls_context() -> ssl.SSLContext:
    """Encrypt without verifying the peer, as Postfix's default `smtp_tls_security_level = may` does."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _smtp_address(addr: str) -> bytes:
    return b"<" + addr.encode("utf-8") + b">"


@dataclass(eq=False)
class _Idle:
    """A connection that finished its transaction cleanly and may carry the next message to the same address."""

    smtp: aiosmtplib.SMTP
    tls: bool
    uses: int = 1
    timer: asyncio.TimerHandle | None = None


class _ConnectionCache:
    """Open sessions kept between messages to one address and port, as Postfix's scache does: the next message
    skips connect, EHLO and STARTTLS. An idle session is closed (QUIT) after ``idle`` seconds; one session
    carries at most ``max_uses`` messages. The per-destination limit still counts only sessions in use."""

    def __init__(self, idle: float, max_uses: int = 100) -> None:
        self.idle = idle
        self.max_uses = max_uses
        self._idle: dict[tuple, list[_Idle]] = {}
        self._closing: set[asyncio.Task] = set()

    def take(self, key: tuple) -> _Idle | None:
        entries = self._idle.get(key)
        while entries:
            entry = entries.pop()
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.smtp.is_connected:
                entry.uses += 1
                return entry
            entry.smtp.close()
        return None

    def give_back(self, key: tuple, entry: _Idle) -> None:
        if entry.uses >= self.max_uses or self.idle <= 0 or not entry.smtp.is_connected:
            self._retire(entry)
            return
        entry.timer = asyncio.get_running_loop().call_later(self.idle, self._expire, key, entry)
        self._idle.setdefault(key, []).append(entry)

    def _expire(self, key: tuple, entry: _Idle) -> None:
        entries = self._idle.get(key, [])
        if entry in entries:
            entries.remove(entry)
            if not entries:
                del self._idle[key]
            self._retire(entry)

    def _retire(self, entry: _Idle) -> None:
        task = asyncio.get_running_loop().create_task(_quit(entry.smtp))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def ehlo_or_helo(smtp: aiosmtplib.SMTP) -> None:
    """EHLO, and HELO when the server refuses it (RFC 5321 §4.1.1.1, §3.2); SMTPHeloError when both are refused."""
    try:
        await smtp.ehlo()
    except SMTPHeloError:
        await smtp.helo()


async def _quit(smtp: aiosmtplib.SMTP, timeout: float = 10.0) -> None:
    if smtp.is_connected:
        with contextlib.suppress(SMTPException, OSError, asyncio.TimeoutError):
            await smtp.quit(timeout=timeout)
    smtp.close()


class Deliverer:
    """Delivers one message to one destination (the caller groups recipients by destination)."""

    def __init__(
        self,
        hostname: str,
        resolver: Resolver,
        settings: DeliveryConfig | None = None,
        *,
        own_addresses: Collection[str] = (),
        log: logging.Logger | None = None,
        tls_policies: TLSPolicies | None = None,
        sources: SendingAddresses | None = None,
        shaper: Shaper | None = None,
        resign: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """`settings`: the config's delivery section (source addresses, limits, timeouts, connection reuse; the
        smarthost is the router's). `own_addresses`: IPs our SMTP listener answers on at the MX port; an MX
        resolving to one of them is ourselves (RFC 5321 §5.1 loop avoidance). `tls_policies`: MTA-STS and DANE
        (tlspolicy/); None keeps TLS opportunistic for every destination. `sources`: the pool of sending
        addresses (the outgoing gateway's egress); when given it, not settings.source_addresses, says where each
        connection leaves from. `shaper`: the per destination budgets and back-offs (shared by the Deliverers of
        successive configs); None: no shaping."""
        settings = settings or DeliveryConfig()
        self.hostname = hostname
        self.resolver = resolver
        self._sources = {address_family(a): str(ipaddress.ip_address(a)) for a in settings.source_addresses}
        self._limits = _DestinationLimits(settings.concurrency_per_destination)
        self.connect_timeout = settings.connect_timeout
        self.command_timeout = settings.command_timeout
        self.log = log or logging.getLogger("appliance.delivery")
        self._own = own_ip_addresses(own_addresses)
        self._tls_context = _opportunistic_tls_context()
        self._cache = _ConnectionCache(idle=settings.connection_reuse_time)
        self.tls_policies = tls_policies
        self._pool = sources
        self._shaper = shaper
        self._resign = resign  # our DKIM signatures made again after the 7-bit downgrade (RFC 6376 §5.3)

    async def deliver(
        self,
        target: Target,
        mail_from: str,
        rcpts: Sequence[str],
        data: bytes,
        queue_id: str = "",
        smtputf8: bool | None = None,
        known: Framing | None = None,
        tls_report: bool = False,
    ) -> dict[str, RcptResult]:
        """Try the target's hosts in order until one gives final answers; a result for every recipient.

        `tls_report`: the message is a TLS-RPT report, which goes out with opportunistic TLS whatever the
        destination's MTA-STS or DANE policy says (RFC 8460 §3: reports are delivered despite TLS failures, and
        their sessions are not reported).

        `smtputf8`: True when the message was received with SMTPUTF8; None detects it from the envelope
        and the header section (RFC 6531 §3.4). `known`: what is known of the message's line endings and dot
        lines, so DATA need not look for them.
        """
        unique = list(dict.fromkeys(rcpts))
        if not unique:
            return {}
        # A CR or LF in an address would smuggle extra SMTP commands into the session: never send it.
        if _has_control(mail_from):
            return dict.fromkeys(unique, _local(553, "5.1.7", "sender address contains control characters"))
        bad = {
            r: _local(553, "5.1.3", "recipient address contains control characters") for r in unique if _has_control(r)
        }
        good = [r for r in unique if r not in bad]
        if not good:
            return bad
        msg = _Message(
            mail_from=mail_from,
            data=data,
            eight_bit=not data.isascii(),
            needs_utf8=bool(smtputf8) or not mail_from.isascii() or not _header_section(data).isascii(),
            utf8_rcpts=frozenset(r for r in good if not r.isascii()),
            known=known or Framing(),
            destination=_destination(target, good) if self._pool is not None else "",
            tls_report=tls_report,
        )
        return {**await self._route_and_send(target, msg, good, queue_id), **bad}

    async def _route_and_send(
        self, target: Target, msg: _Message, rcpts: list[str], queue_id: str
    ) -> dict[str, RcptResult]:
        try:
            hops = await self._hops(target)
        except NullMX as exc:
            return dict.fromkeys(rcpts, _local(556, "5.1.10", str(exc)))
        except NoSuchDomain as exc:
            return dict.fromkeys(rcpts, _local(550, "5.1.2", f"host or domain name not found: {exc}"))
        except _LoopError as exc:
            return dict.fromkeys(rcpts, _local(554, "5.4.6", str(exc)))
        except DNSTemporaryError as exc:
            return dict.fromkeys(rcpts, _local(451, "4.4.3", f"DNS lookup failed: {exc}"))
        if (self.tls_policies is not None and not msg.tls_report and isinstance(target, MXTarget)
                and not target.domain.startswith("[")):
            hops = await self._apply_tls_policy(target, hops)
            if not hops:
                text = f"no MX host of {target.domain} matches its MTA-STS policy (RFC 8461 §4.1)"
                return dict.fromkeys(rcpts, _local(451, "4.7.5", text))
        if self._shaper is not None:
            return await self._shaped(self._shaper, target, hops, msg, rcpts, queue_id)
        return await self._try_hops(hops, msg, rcpts, queue_id)

    async def _apply_tls_policy(self, target: MXTarget, hops: list[_Hop]) -> list[_Hop]:
        """The TLS each MX must give; MX hosts the policy excludes are dropped."""
        assert self.tls_policies is not None
        domain_tls = await self.tls_policies.for_domain(target.domain, [h.name for h in hops], target.port)
        if domain_tls is None:
            return hops
        kept = []
        for hop in hops:
            if hop.name in domain_tls.hosts:
                hop.tls = domain_tls.hosts[hop.name]
                kept.append(hop)
        return kept

    async def _shaped(
        self, shaper: Shaper, target: Target, hops: list[_Hop], msg: _Message, rcpts: list[str], queue_id: str
    ) -> dict[str, RcptResult]:
        """The hops within the destination's budget; deferred without connecting while it is in back-off or
        out of room (the MX names are known here, so a provider's entry applies)."""
        domain = target.domain if isinstance(target, MXTarget) else None
        msg.shaping_key = key = shaper.key_for(domain, [hop.name for hop in hops])
        async with shaper.session(key) as deferral:
            if deferral is not None:
                self.log.info("delivery queue_id=%s deferred by shaping: %s", queue_id or "-", deferral.text)
                return dict.fromkeys(rcpts, RcptResult(deferral.code, deferral.enhanced, deferral.text, None,
                                                       retry_after=deferral.retry_after))
            results = await self._try_hops(hops, msg, rcpts, queue_id)
        until = shaper.backoff_of(key)
        if not until:
            return results
        # Throttled: what stays queued is tried again when the back-off ends, not on the retry schedule.
        return {rcpt: replace(r, retry_after=until) if r.temporary and r.retry_after is None else r
                for rcpt, r in results.items()}

    async def _hops(self, target: Target) -> list[_Hop]:
        if isinstance(target, HostsTarget):
            return [_Hop(host, port) for host, port in target.hosts]
        literal = ip_literal(target.domain) if target.domain.startswith("[") else None
        if literal is not None:
            return [_Hop(literal, target.port, [literal])]
        mx = await self.resolver.mx_hosts(target.domain)
        hops = [_Hop(h.host, target.port) for h in mx]
        if self._own:
            hops = await self._drop_self_and_worse(target.domain, mx, hops)
        return hops

    async def _drop_self_and_worse(self, domain: str, mx: list, hops: list[_Hop]) -> list[_Hop]:
        """RFC 5321 §5.1: if we are in the MX list, discard ourselves and every MX not better than us."""
        results = await asyncio.gather(*(self.resolver.addresses(h.name) for h in hops), return_exceptions=True)
        own_pref: int | None = None
        for hop, host, addrs in zip(hops, mx, results, strict=True):
            if isinstance(addrs, BaseException):
                if not isinstance(addrs, DNSError):
                    raise addrs
                continue
            hop.addresses = addrs
            if any(a in self._own for a in addrs) and (own_pref is None or host.preference < own_pref):
                own_pref = host.preference
        if own_pref is None:
            return hops
        kept = [hop for hop, host in zip(hops, mx, strict=True) if host.preference < own_pref]
        if not kept:
            raise _LoopError(f"mail for {domain} loops back to myself")
        return kept

    async def _try_hops(
        self, hops: list[_Hop], msg: _Message, rcpts: list[str], queue_id: str
    ) -> dict[str, RcptResult]:
        last: RcptResult | None = None
        dns_permanent = 0
        for hop in hops:
            if hop.addresses is None:
                try:
                    hop.addresses = await self.resolver.addresses(hop.name)
                except NoSuchDomain as exc:
                    dns_permanent += 1
                    last = _local(550, "5.4.4", f"unable to route: {exc}")
                    continue
                except DNSError as exc:
                    last = _local(451, "4.4.3", f"DNS lookup failed: {exc}")
                    continue
            if not hop.addresses:
                dns_permanent += 1
                last = _local(550, "5.4.4", f"unable to route: {hop.name} has no A or AAAA record")
                continue
            for address in hop.addresses:
                try:
                    return await self._attempt(hop, address, msg, rcpts, queue_id)
                except _Failover as exc:
                    last = exc.result
                    if msg.shaping_key is not None and self._shaper and self._shaper.throttling(last):
                        # A verdict on us, which every MX of the destination shares: the other hosts would
                        # say the same, and asking them is sending too fast again.
                        return dict.fromkeys(rcpts, last)
        if last is None:
            last = _local(451, "4.4.3", "no host to deliver to")
        elif dns_permanent < len(hops) and last.permanent and last.remote_host is None:
            # Only some hosts are unknown to DNS; others exist but failed: keep retrying.
            last = _local(451, "4.4.3", last.text)
        return dict.fromkeys(rcpts, last)

    async def _attempt(
        self, hop: _Hop, address: str, msg: _Message, rcpts: list[str], queue_id: str
    ) -> dict[str, RcptResult]:
        """One connection to one address; returns final results or raises _Failover."""
        if self._pool is None:
            return await self._attempt_from(hop, address, msg, rcpts, queue_id, None)
        tried: set[str] = set()
        while True:  # an address that cannot be bound leaves the pool; the next healthy one is tried
            source = self._pick(self._pool, address, msg.destination, tried)
            try:
                return await self._observed(self._pool, hop, address, msg, rcpts, queue_id, source)
            except _BindFailed as exc:
                self._pool.bind_failed(source.address, exc.error)

    @staticmethod
    def _pick(pool: SendingAddresses, address: str, destination: str, tried: set[str]) -> Source:
        family = address_family(address)
        if family not in pool.families:
            version = "IPv6" if family == socket.AF_INET6 else "IPv4"
            raise _Failover(_local(451, "4.4.4", f"no {version} sending address for {address}"))
        source = pool.pick(family, destination)
        if source is None or source.address in tried:
            raise _Failover(RcptResult(451, "4.4.0", NO_HEALTHY_SOURCE, None, held=True))
        tried.add(source.address)
        return source

    async def _observed(
        self, pool: SendingAddresses, hop: _Hop, address: str, msg: _Message, rcpts: list[str], queue_id: str,
        source: Source,
    ) -> dict[str, RcptResult]:
        """An attempt from the pool's `source`: every refusal goes to the pool; a refusal that says the source
        address is blocked defers its recipients (the next attempt may leave from a healthy address)."""
        try:
            results = await self._attempt_from(hop, address, msg, rcpts, queue_id, source)
        except _Failover as exc:
            if exc.result.remote_host is not None:
                pool.observe(source.address, msg.destination, _reply_text(exc.result))
            raise
        verdicts: dict[int, RcptResult] = {}  # one verdict per distinct reply: a refusal is often shared
        for rcpt, result in results.items():
            if result.ok or result.remote_host is None:
                continue
            verdict = verdicts.get(id(result))
            if verdict is None:
                verdict = verdicts[id(result)] = _blocked(result, source) if pool.observe(
                    source.address, msg.destination, _reply_text(result)) else result
            results[rcpt] = verdict
        return results

    async def _attempt_from(
        self, hop: _Hop, address: str, msg: _Message, rcpts: list[str], queue_id: str, source: Source | None
    ) -> dict[str, RcptResult]:
        async with self._limits.slot((address, hop.port)):
            started = time.monotonic()
            results: dict[str, RcptResult] | None = None
            failure: RcptResult | None = None
            tls = False
            try:
                if hop.tls is not None and hop.tls.refused is not None:
                    raise self._tls_not_given(hop, address, hop.tls.refused)
                try:
                    results, tls = await self._session(hop, address, msg, rcpts, use_tls=True, source=source)
                except _TLSFailed as exc:
                    if hop.tls is not None and hop.tls.required:
                        raise self._tls_not_given(hop, address, TLSFailure(VALIDATION_FAILURE, str(exc))) from exc
                    if hop.tls is not None:  # testing mode: reported, then plaintext as without a policy
                        hop.tls.report(TLSFailure(VALIDATION_FAILURE, str(exc)), address)
                    # Opportunistic TLS: a failed handshake falls back to plaintext on a new connection.
                    results, tls = await self._session(hop, address, msg, rcpts, use_tls=False, source=source)
                except _TLSRequired as exc:
                    raise self._tls_not_given(hop, address, exc.failure, reported=True) from exc
                return results
            except _Failover as exc:
                failure = exc.result
                raise
            finally:
                self._log_attempt(queue_id, hop, address, rcpts, results, failure, tls, started)
                if msg.shaping_key is not None and self._shaper is not None:
                    self._shaper.observe(msg.shaping_key, results.values() if results else (failure,) if failure
                                         else ())

    @staticmethod
    def _tls_not_given(hop: _Hop, address: str, failure: TLSOutcome, reported: bool = False) -> _Failover:
        """A host that does not give the required TLS is skipped for the next one; with none left the
        message is deferred, never sent in plaintext nor bounced for it (RFC 8461 §5, RFC 7672 §2.2)."""
        if hop.tls is not None and not reported:
            hop.tls.report(failure, address)
        remote = hop.name if hop.name == address else f"{hop.name}[{address}]"
        text = f"TLS required by policy not given by {remote}: {failure.result_type}: {failure.reason}"
        return _Failover(_local(451, "4.7.5", text, remote))

    def _log_attempt(
        self,
        queue_id: str,
        hop: _Hop,
        address: str,
        rcpts: list[str],
        results: dict[str, RcptResult] | None,
        failure: RcptResult | None,
        tls: bool,
        started: float,
    ) -> None:
        duration = time.monotonic() - started
        if results is not None:
            first = next(iter(results.values()))
            delivered = sum(1 for r in results.values() if r.ok)
            summary = f"{first.code} {first.enhanced}"
        else:
            delivered = 0
            summary = f"{failure.code} {failure.enhanced}" if failure else "error"
        self.log.info(
            "delivery queue_id=%s host=%s addr=[%s]:%d rcpts=%d delivered=%d result=%s tls=%s duration=%.3fs",
            queue_id or "-",
            hop.name,
            address,
            hop.port,
            len(rcpts),
            delivered,
            summary.replace(" ", "/"),
            "yes" if tls else "no",
            duration,
            extra={"queue_id": queue_id, "remote_host": hop.name, "remote_addr": address},
        )

    def _client(self, address: str, port: int, picked: Source | None = None) -> aiosmtplib.SMTP:
        source = picked.address if picked is not None else self._sources.get(address_family(address))
        return aiosmtplib.SMTP(
            hostname=address,
            port=port,
            local_hostname=(picked.helo if picked is not None else None) or self.hostname,
            source_address=(source, 0) if source else None,
            timeout=self.command_timeout,
            start_tls=False,
            validate_certs=False,
        )

    async def _session(
        self, hop: _Hop, address: str, msg: _Message, rcpts: list[str], use_tls: bool, source: Source | None = None
    ) -> tuple[dict[str, RcptResult], bool]:
        remote = hop.name if hop.name == address else f"{hop.name}[{address}]"
        # A session verified for one MX name under a policy is kept apart from the opportunistic ones, and a
        # session from one sending address apart from the others (one suspended is never reused).
        key = (address, hop.port, use_tls, hop.name if hop.tls is not None else None, source)
        cached = self._cache.take(key)
        if cached is not None:
            try:
                results = await self._transaction(cached.smtp, remote, msg, rcpts)
            except (_Failover, TimeoutError, SMTPException, OSError):
                # The kept session died while idle (or the peer closed it with 421): the peer took no message
                # on it in this transaction (a lost DATA is a result, not an exception), so start afresh.
                cached.smtp.close()
            else:
                self._cache.give_back(key, cached)
                return results, cached.tls
        smtp = self._client(address, hop.port, source)
        kept: _Idle | None = None
        try:
            await self._connect(smtp, remote, address, hop.port)
            tls = await self._greet(smtp, remote, hop, use_tls)
            results = await self._transaction(smtp, remote, msg, rcpts)
            kept = _Idle(smtp, tls)
            return results, tls
        except (TimeoutError, SMTPException, OSError) as exc:
            raise _Failover(_local(421, "4.4.2", f"lost connection with {remote}: {exc}")) from exc
        finally:
            if kept is not None:
                self._cache.give_back(key, kept)
            else:
                await _quit(smtp, min(10.0, self.command_timeout))

    async def _connect(self, smtp: aiosmtplib.SMTP, remote: str, address: str, port: int) -> None:
        try:
            await smtp.connect(timeout=self.connect_timeout)
        except SMTPConnectResponseError as exc:
            # RFC 5321 §3.8 / Postfix: a 4xx or 5xx greeting sends us to the next host.
            raise _Failover(_refused_to_talk(exc.code, exc.message, remote)) from exc
        except (TimeoutError, SMTPException, OSError) as exc:
            unbound = _cannot_bind(exc) if self._pool is not None else None
            if unbound is not None:
                raise _BindFailed(unbound) from exc
            raise _Failover(_local(421, "4.4.1", f"connect to {remote}:{port}: {exc}")) from exc

    async def _greet(self, smtp: aiosmtplib.SMTP, remote: str, hop: _Hop, use_tls: bool) -> bool:
        """EHLO (HELO when refused), then STARTTLS when offered. True when the session is encrypted."""
        await self._ehlo(smtp, remote)
        required = hop.tls is not None and hop.tls.required
        if not (use_tls and smtp.supports_extension("starttls")):
            if hop.tls is not None and use_tls:  # testing mode goes on in plaintext, and reports it
                failure = TLSFailure(STARTTLS_NOT_SUPPORTED, f"{remote} offers no STARTTLS")
                self._report(hop, smtp, failure)
                if required:
                    raise _TLSRequired(failure)
            return False
        server_name = None if ip_literal(hop.name) else hop.name
        try:
            await smtp.starttls(tls_context=self._tls_context, server_hostname=server_name)
        except SMTPResponseException as exc:
            if hop.tls is not None:
                failure = TLSFailure(STARTTLS_NOT_SUPPORTED, f"{remote} refused STARTTLS: {exc.code} {exc.message}")
                self._report(hop, smtp, failure)
                if required:
                    raise _TLSRequired(failure) from exc
            return False  # STARTTLS refused with a reply: the plaintext session goes on (RFC 3207 §4)
        except (TimeoutError, ssl.SSLError, SMTPException, OSError) as exc:
            raise _TLSFailed(str(exc)) from exc
        if hop.tls is not None:
            self._verify(hop, smtp)
        await self._ehlo(smtp, remote)  # RFC 3207 §4.2: forget what we knew, ask again
        return True

    @staticmethod
    def _report(hop: _Hop, smtp: aiosmtplib.SMTP, failure: TLSOutcome | None) -> TLSOutcome | None:
        """Hand the session's outcome (None: success) to the policy, for TLS-RPT; returns it."""
        assert hop.tls is not None
        peer = smtp.get_transport_info("peername") if smtp.transport is not None else None
        hop.tls.report(failure, peer[0] if peer else "")
        return failure

    def _verify(self, hop: _Hop, smtp: aiosmtplib.SMTP) -> None:
        """Check the server's certificates as the host's policy says; an enforced failure ends the session."""
        assert hop.tls is not None
        failure = hop.tls.verify(peer_chain(smtp.get_transport_info("ssl_object")))
        self._report(hop, smtp, failure)
        if failure is not None:
            self.log.warning("TLS policy: %s failed verification: %s: %s%s", hop.name, failure.result_type,
                             failure.reason, "" if hop.tls.enforced else " (testing mode: delivering anyway)")
            if hop.tls.enforced:
                raise _TLSRequired(failure)

    async def _ehlo(self, smtp: aiosmtplib.SMTP, remote: str) -> None:
        try:
            await ehlo_or_helo(smtp)
        except SMTPHeloError as exc:
            raise _Failover(_refused_to_talk(exc.code, exc.message, remote)) from exc

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, remote: str, msg: _Message, rcpts: list[str]
    ) -> dict[str, RcptResult]:
        """Capability checks, then MAIL/RCPT/DATA; recipients refused for "too many" go in a follow-up."""
        peer_utf8 = smtp.supports_extension("smtputf8")
        if msg.needs_utf8 and not peer_utf8:
            # RFC 6531 §3.5 / Postfix: a message that needs SMTPUTF8 cannot go to a peer without it.
            return dict.fromkeys(
                rcpts, _local(550, "5.6.7", f"{remote} does not support SMTPUTF8 required by this message", remote)
            )
        payload = msg.data
        if msg.eight_bit and not smtp.supports_extension("8bitmime"):
            try:
                payload = downgrade_to_7bit(msg.data)  # RFC 6152 §3: never send 8-bit data to a 7-bit peer
                if self._resign is not None:
                    payload = self._resign(payload)
            except CannotDowngrade as exc:
                text = f"{remote} does not support 8BITMIME and the message cannot be converted: {exc}"
                return dict.fromkeys(rcpts, _local(554, "5.6.3", text, remote))
        size_limit = _size_limit(smtp)
        if size_limit and len(payload) > size_limit:
            text = f"message size {len(payload)} exceeds the limit {size_limit} of {remote}"
            return dict.fromkeys(rcpts, _local(552, "5.3.4", text, remote))
        results: dict[str, RcptResult] = {}
        sendable = []
        for rcpt in rcpts:
            if rcpt in msg.utf8_rcpts and not peer_utf8:
                results[rcpt] = _local(553, "5.6.7", f"{remote} does not support SMTPUTF8 for this address", remote)
            else:
                sendable.append(rcpt)
        use_utf8 = peer_utf8 and (msg.needs_utf8 or any(r in msg.utf8_rcpts for r in sendable))
        options = self._mail_options(smtp, payload, use_utf8)
        delivered_once = False
        while sendable:
            try:
                final, sendable = await self._send_once(smtp, remote, msg.mail_from, options, sendable, payload,
                                                        msg.known if payload is msg.data else Framing())
            except (_Failover, SMTPException, OSError, TimeoutError) as exc:
                if not delivered_once:
                    raise
                # A copy already went out on this connection: the rest waits for the queue, not another host.
                smtp.close()  # in an unknown state: never kept for the next message
                reason = exc.result if isinstance(exc, _Failover) else _local(451, "4.4.2", str(exc), remote)
                results.update(dict.fromkeys(sendable, reason))
                break
            results.update(final)
            delivered_once = delivered_once or any(r.ok for r in final.values())
        return results

    async def _send_once(
        self, smtp: aiosmtplib.SMTP, remote: str, mail_from: str, options: list[bytes], rcpts: list[str], data: bytes,
        known: Framing = Framing(),  # noqa: B008 - frozen, shared safely
    ) -> tuple[dict[str, RcptResult], list[str]]:
        """One MAIL transaction: final results, and the recipients to send again (RFC 5321 §4.5.3.1.10)."""
        if smtp.supports_extension("pipelining"):
            return await self._send_pipelined(smtp, remote, mail_from, options, rcpts, data, known)
        results: dict[str, RcptResult] = {}
        reply = await smtp.execute_command(b"MAIL", b"FROM:" + _smtp_address(mail_from), *options)
        if reply.code == 421:
            raise _Failover(reply_result(reply.code, reply.message, remote))
        if reply.code != 250:
            return dict.fromkeys(rcpts, reply_result(reply.code, reply.message, remote)), []
        accepted: list[str] = []
        again: list[str] = []
        for rcpt in rcpts:
            reply = await smtp.execute_command(b"RCPT", b"TO:" + _smtp_address(rcpt))
            if reply.code == 421:
                raise _Failover(reply_result(reply.code, reply.message, remote))
            _sort_recipient(rcpt, reply_result(reply.code, reply.message, remote), accepted, again, results)
        if not accepted:
            try:
                await smtp.rset()
            except (SMTPException, OSError, TimeoutError):
                smtp.close()  # the transaction may still be open there: not a session to keep
            return results, []
        outcome = await self._data(smtp, remote, data, known)
        return _after_data(results, accepted, again, outcome)

    async def _send_pipelined(
        self, smtp: aiosmtplib.SMTP, remote: str, mail_from: str, options: list[bytes], rcpts: list[str], data: bytes,
        known: Framing,
    ) -> tuple[dict[str, RcptResult], list[str]]:
        """``_send_once`` for a peer that offers PIPELINING (RFC 2920 §3.1): MAIL, the RCPTs and DATA go in one
        write and their replies are read in order; the message follows a 354, as without pipelining."""
        timeout = self.command_timeout
        commands = [b" ".join([b"MAIL FROM:" + _smtp_address(mail_from), *options])]
        commands += [b"RCPT TO:" + _smtp_address(rcpt) for rcpt in rcpts]
        results: dict[str, RcptResult] = {}
        accepted: list[str] = []
        again: list[str] = []
        with lend_transport(smtp) as (replies, transport):
            transport.write(b"\r\n".join([*commands, b"DATA", b""]))
            mail = await replies.reply(timeout)
            rcpt_replies = [await replies.reply(timeout) for _ in rcpts]
            start = await replies.reply(timeout)
            for reply in (mail, *rcpt_replies, start):
                if reply.code == 421:  # the peer is closing: nothing was taken here, try the next host
                    raise _Failover(reply_result(reply.code, reply.message, remote))
            if mail.code == 250:
                for rcpt, reply in zip(rcpts, rcpt_replies, strict=True):
                    _sort_recipient(rcpt, reply_result(reply.code, reply.message, remote), accepted, again, results)
            else:
                results = dict.fromkeys(rcpts, reply_result(mail.code, mail.message, remote))
            if start.code != 354 or not accepted:
                if start.code == 354:  # DATA taken with no recipient left: an empty message, which it refuses
                    transport.write(b".\r\n")
                    await replies.reply(timeout)
                if mail.code == 250:  # the transaction is still open over there
                    transport.write(b"RSET\r\n")
                    if (await replies.reply(timeout)).code != 250:
                        smtp.close()  # in an unknown state: the results stand, the session is not kept
                if accepted:  # the peer refuses the message itself
                    results.update(dict.fromkeys([*accepted, *again], reply_result(start.code, start.message,
                                                                                     remote)))
                return results, []
            payload, end = _framed(data, known)
            try:
                transport.write(payload)
                transport.write(end)
                final = await replies.reply(timeout)
            except (TimeoutError, SMTPException, OSError) as exc:
                outcome = _lost_in_data(smtp, remote, exc)
            else:
                outcome = reply_result(final.code, final.message, remote)
        return _after_data(results, accepted, again, outcome)

    def _mail_options(self, smtp: aiosmtplib.SMTP, payload: bytes, use_utf8: bool) -> list[bytes]:
        options = []
        if "size" in smtp.esmtp_extensions:
            options.append(b"SIZE=%d" % len(payload))  # RFC 1870 §6
        if not payload.isascii():
            options.append(b"BODY=8BITMIME")  # RFC 6152 (only reached when the peer offers it)
        if use_utf8:
            options.append(b"SMTPUTF8")
        return options

    async def _data(self, smtp: aiosmtplib.SMTP, remote: str, data: bytes, known: Framing) -> RcptResult:
        """DATA; its reply applies to every accepted recipient. A lost connection here is never failed over:
        the peer may already hold the message, another host would duplicate it."""
        try:
            reply = await _send_data(smtp, data, self.command_timeout, known)
        except SMTPResponseException as exc:
            return reply_result(exc.code, exc.message, remote)
        except (TimeoutError, SMTPException, OSError) as exc:
            return _lost_in_data(smtp, remote, exc)
        return reply_result(reply.code, reply.message, remote)


def _destination(target: Target, rcpts: Sequence[str]) -> str:
    """The destination domain the egress pool counts refusals by: the MX domain, or the recipients' domain when
    the route names its hosts (a smarthost, a forwarded domain's destinations)."""
    if isinstance(target, MXTarget):
        return target.domain.lower()
    return rcpts[0].rpartition("@")[2].lower() if rcpts else ""


def _reply_text(result: RcptResult) -> str:
    return f"{result.code} {result.enhanced} {result.text}"


def _blocked(result: RcptResult, source: Source) -> RcptResult:
    """A permanent refusal of our sending address, not of the message: deferred with the peer's detail in a
    4.x.x code, so that the queue tries again (from a healthy address once this one is suspended)."""
    if not result.permanent:
        return result
    detail = result.enhanced.split(".", 1)[1]
    return RcptResult(450, f"4.{detail}", f"refused from {source.address}: {result.code} {result.text}",
                      result.remote_host)


def _cannot_bind(exc: BaseException) -> OSError | None:
    """The EADDRNOTAVAIL behind a failed connect (aiosmtplib wraps the OSError of create_connection)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRNOTAVAIL:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _lost_in_data(smtp: aiosmtplib.SMTP, remote: str, exc: BaseException) -> RcptResult:
    """No answer to the message itself: the peer may hold it already, so no failover to another host (that
    would duplicate it) but a retry from the queue; and the peer's answer may still come, so a session out of
    step never carries another message."""
    smtp.close()
    return _local(451, "4.4.2", f"lost connection with {remote} while sending the message: {exc}", remote)


def _after_data(results: dict[str, RcptResult], accepted: list[str], again: list[str],
                outcome: RcptResult) -> tuple[dict[str, RcptResult], list[str]]:
    """The DATA outcome is every accepted recipient's; those held back for "too many recipients" go in the next
    transaction, unless the peer refused the message itself."""
    results.update(dict.fromkeys(accepted, outcome))
    if not outcome.ok:
        results.update(dict.fromkeys(again, outcome))
        return results, []
    return results, again


async def _send_data(smtp: aiosmtplib.SMTP, data: bytes, timeout: float,
                     known: Framing = Framing()) -> aiosmtplib.SMTPResponse:  # noqa: B008 - frozen
    """DATA with the message as it is: aiosmtplib rewrites every line ending with a regular expression, a
    fifth of the delivery time for a 100 KB message; messages from our spool have CRLF line endings only and
    need at most the dot-stuffing of RFC 5321 §4.5.2 (none when the listener saw no line starting with ".")."""
    protocol = getattr(smtp, "protocol", None)
    if protocol is None or not hasattr(protocol, "read_response"):
        return await smtp.data(data)
    payload, end = _framed(data, known)
    start = await smtp.execute_command(b"DATA", timeout=timeout)
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    protocol.write(payload)  # two writes: no copy of the whole message to append five bytes
    protocol.write(end)
    reply = await protocol.read_response(timeout=timeout)
    if reply.code != 250:
        raise SMTPDataError(reply.code, reply.message)
    return reply


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _framed(data: bytes, known: Framing) -> tuple[bytes, bytes]:
    """The message as it goes after 354, and its end marker: every line ending made CRLF (as aiosmtplib's
    data() does; skipped when the caller knows there is nothing to repair) and dot-stuffed (RFC 5321 §4.5.2)."""
    if not known.crlf_only and has_bare_cr_or_lf(data):
        data = _LINE_END.sub(b"\r\n", data)
    payload = data
    if not known.dot_free:
        payload = data.replace(b"\r\n.", b"\r\n..")
        if payload.startswith(b"."):
            payload = b"." + payload
    end = b".\r\n" if payload.endswith(b"\r\n") or not payload else b"\r\n.\r\n"
    return payload, end


@dataclass(frozen=True)
class OwnAddresses:
    """The IPs our SMTP listener answers on at the MX port, for RFC 5321 §5.1 loop avoidance."""

    addresses: frozenset[str] = frozenset()
    wildcard: bool = False  # listening on 0.0.0.0 or ::, so every loopback address is ours too

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        return address in self.addresses or (self.wildcard and ipaddress.ip_address(address).is_loopback)

    def __bool__(self) -> bool:
        return bool(self.addresses) or self.wildcard


def own_ip_addresses(listen_hosts: Collection[str]) -> OwnAddresses:
    """A wildcard listen host (0.0.0.0, ::, "") stands for every interface address and all of loopback."""
    own: set[str] = set()
    wildcard = False
    for host in listen_hosts:
        literal = ip_literal(host) if host else "0.0.0.0"
        if literal is None:
            logging.getLogger("appliance.delivery").warning("loop check: %r is not an IP address, ignored", host)
        elif ipaddress.ip_address(literal).is_unspecified:
            wildcard = True
            own.update(interface_addresses())
        else:
            own.add(literal)
    return OwnAddresses(frozenset(own), wildcard)


class _LoopError(Exception):
    """The best MX is ourselves."""


def _has_control(address: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in address)


def _sort_recipient(rcpt: str, result: RcptResult, accepted: list[str], again: list[str],
                    results: dict[str, RcptResult]) -> None:
    """After its RCPT reply a recipient is accepted, sent again in a new transaction (a "too many recipients"
    answer once some were accepted, RFC 5321 §4.5.3.1.10), or done with that reply as its result."""
    if result.ok:
        accepted.append(rcpt)
    elif accepted and _too_many_recipients(result):
        again.append(rcpt)
    else:
        results[rcpt] = result


def _too_many_recipients(result: RcptResult) -> bool:
    """RFC 5321 §4.5.3.1.10: 452 (or 4.5.3) for "too many recipients" means: send the rest in a new transaction."""
    return result.code == 452 and (result.enhanced == "4.5.3" or "too many" in result.text.lower())


def _size_limit(smtp: aiosmtplib.SMTP) -> int:
    value = smtp.esmtp_extensions.get("size", "").strip()
    return int(value) if value.isdigit() else 0
