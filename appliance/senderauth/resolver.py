"""DNS for sender authentication, on the appliance's resolver settings (config.dns), never the event loop's time.

The lookups the checks make themselves (PTR, A/AAAA, TXT of DKIM keys and DMARC records) are asynchronous
(dnspython's asyncresolver). pyspf and dkimpy are synchronous libraries: pyspf runs in a bounded thread pool
with a synchronous resolver of the same settings (spfcheck.py), and dkimpy's signature checks run there too,
on keys fetched beforehand, so a 25 MB message being hashed does not hold up the other sessions. Both
resolvers share one cache, which honours the records' TTLs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from appliance.config.model import DNSConfig

log = logging.getLogger("appliance.senderauth")
T = TypeVar("T")
R = TypeVar("R", dns.resolver.Resolver, dns.asyncresolver.Resolver)
# Threads for pyspf and dkimpy: enough that a slow SPF record (a DNS timeout) does not queue the others behind
# it, few enough that a flood of sessions cannot start a thread each.
POOL_THREADS = 8


class TempError(Exception):
    """A DNS answer that may come next time: timeout, SERVFAIL, no nameserver answered (RFC 8601 temperror)."""


def configure(resolver: dns.resolver.BaseResolver, settings: DNSConfig, cache: dns.resolver.Cache) -> None:
    """Point ``resolver`` at the config's nameservers, port and timeout (the system's resolv.conf when the
    config names no nameserver)."""
    if settings.nameservers:
        resolver.nameservers = list(settings.nameservers)
    resolver.port = settings.port
    resolver.timeout = settings.timeout
    resolver.lifetime = settings.timeout
    resolver.cache = cache


def _resolver(kind: type[R], settings: DNSConfig) -> R:
    try:
        return kind(configure=not settings.nameservers)
    except dns.resolver.NoResolverConfiguration as exc:
        # Keep running: every lookup is a temperror, which never refuses mail, and the log says why.
        log.error("no usable nameserver in the system configuration: %s", exc)
        return kind(configure=False)


class Lookups:
    """The DNS questions of sender authentication, and the thread pool of the synchronous libraries."""

    def __init__(self, settings: DNSConfig) -> None:
        self.settings = settings
        self.cache = dns.resolver.Cache()
        self._async = _resolver(dns.asyncresolver.Resolver, settings)
        configure(self._async, settings, self.cache)
        self._pool: ThreadPoolExecutor | None = None

    def sync_resolver(self) -> dns.resolver.Resolver:
        """A synchronous resolver with the same settings and cache (one per thread: dnspython's resolvers are
        not shared between threads)."""
        resolver = _resolver(dns.resolver.Resolver, self.settings)
        configure(resolver, self.settings, self.cache)
        return resolver

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in the bounded thread pool."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="senderauth")
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def close(self) -> None:
        """The pool's threads end once the checks already handed to them are done (a reload retires a pipeline
        while sessions may still be using it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    async def _answer(self, name: str | dns.name.Name, rdtype: str) -> list[object]:
        """The records; [] when the name does not exist or has none of that type (both are answers)."""
        try:
            answer = await self._async.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.name.NameTooLong, dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.BadEscape):
            return []  # a name no one can publish records at
        except dns.exception.DNSException as exc:
            raise TempError(f"{name} {rdtype}: {exc.__class__.__name__}: {exc}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record at ``name``, its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(record.strings) for record in await self._answer(name, "TXT")]  # type: ignore[attr-defined]

    async def ptr(self, ip: str) -> list[str]:
        """The PTR names of ``ip``, without the final dot."""
        records = await self._answer(dns.reversename.from_address(ip), "PTR")
        return [record.target.to_text(omit_final_dot=True) for record in records]  # type: ignore[attr-defined]

    async def addresses(self, name: str, rdtype: str) -> list[str]:
        """The A or AAAA addresses of ``name``."""
        return [record.address for record in await self._answer(name, rdtype)]  # type: ignore[attr-defined]
