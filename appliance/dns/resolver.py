"""MX and address resolution for outbound delivery (RFC 5321 §5.1, RFC 7505).

The resolver talks to configurable nameservers and port, so that tests and the container topology point it
at their own DNS server (a real BIND in the tests).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import netifaces

from appliance.config.model import DNSConfig


class DNSError(Exception):
    """Base of the resolution errors; the message names the domain and the reason."""


class NoSuchDomain(DNSError):
    """The name does not exist (NXDOMAIN) or has no MX, A or AAAA record: a permanent failure."""


class NullMX(DNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail, bounce at once."""


class DNSTemporaryError(DNSError):
    """Timeout, SERVFAIL, refused, unreachable nameserver: retry later."""


@dataclass(frozen=True, order=True)
class MXHost:
    preference: int
    host: str


def host_has_ipv6_route() -> bool:
    """True when an interface holds a global IPv6 address (loopback and link-local do not count)."""
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET6, []):
            addr = entry.get("addr", "").split("%", 1)[0]
            try:
                ip = ipaddress.IPv6Address(addr)
            except ValueError:
                continue
            if ip.is_global:
                return True
    return False


def interface_addresses() -> set[str]:
    """Every IPv4 and IPv6 address on this host's interfaces (scope suffixes removed)."""
    found: set[str] = set()
    for name in netifaces.interfaces():
        addrs = netifaces.ifaddresses(name)
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in addrs.get(family, []):
                literal = ip_literal(entry.get("addr", "").split("%", 1)[0])
                if literal is not None:
                    found.add(literal)
    return found


@functools.lru_cache(maxsize=1024)  # the same few relay hosts, parsed once per delivery otherwise
def ip_literal(host: str) -> str | None:
    """The normalised IP if `host` is an IP address (optionally RFC 5321 §4.1.3 bracketed), else None."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class Resolver:
    """Asynchronous MX/A/AAAA lookups with the error classes delivery needs (permanent vs temporary)."""

    @classmethod
    def from_config(cls, settings: DNSConfig) -> Resolver:
        """The resolver of the config's dns section."""
        return cls(list(settings.nameservers), port=settings.port, timeout=settings.timeout)

    def __init__(
        self,
        nameservers: list[str],
        port: int = DNSConfig.port,
        timeout: float = DNSConfig.timeout,
        prefer_ipv6: bool | None = None,
    ) -> None:
        """`nameservers`: an empty list means the system's resolv.conf."""
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration as exc:
            # Keep running: every lookup fails as temporary, so mail waits in the queue and the log says why.
            logging.getLogger("appliance.dns").error("no usable nameserver in the system configuration: %s", exc)
            self._resolver = dns.asyncresolver.Resolver(configure=False)
        if nameservers:
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout
        # Honour the records' TTLs instead of asking again for every message to the same domain.
        self._resolver.cache = dns.resolver.Cache()
        self._prefer_ipv6 = host_has_ipv6_route() if prefer_ipv6 is None else prefer_ipv6

    async def _query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata] | None:
        """Records of `rdtype` at `name`; [] when the name exists without them; None for NXDOMAIN."""
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.YXDOMAIN as exc:
            raise NoSuchDomain(f"{name}: {exc}") from exc
        except (dns.name.NameTooLong, dns.name.EmptyLabel, dns.name.LabelTooLong) as exc:
            raise NoSuchDomain(f"{name}: malformed domain name ({exc})") from exc
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DNSTemporaryError(f"{name} {rdtype}: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise DNSTemporaryError(f"{name} {rdtype}: {exc}") from exc
        if answer.rrset is None:
            return []
        return list(answer.rrset)

    async def mx_hosts(self, domain: str) -> list[MXHost]:
        """MX hosts of `domain`, best first, shuffled among equal preference (RFC 5321 §5.1)."""
        records = await self._query(domain, "MX")
        if records is None:
            raise NoSuchDomain(f"{domain}: no such domain (NXDOMAIN)")
        if not records:
            # RFC 5321 §5.1: no MX but an address record -> implicit MX, the domain itself at preference 0.
            if await self.addresses(domain):
                return [MXHost(0, domain.rstrip("."))]
            raise NoSuchDomain(f"{domain}: no MX, A or AAAA record")
        hosts = [MXHost(rr.preference, rr.exchange.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
                 for rr in records]
        real = [h for h in hosts if h.host not in ("", ".")]
        if not real:
            # RFC 7505 §3: a single MX whose exchange is the root "." means the domain takes no mail.
            raise NullMX(f"{domain}: domain publishes a null MX and accepts no mail (RFC 7505)")
        random.shuffle(real)
        real.sort(key=lambda h: h.preference)  # stable: equal preferences keep their random order
        return real

    async def txt(self, name: str) -> list[str]:
        """The TXT records at `name`, each its strings joined (RFC 6376 §3.6.2.2); [] when there are none."""
        records = await self._query(name, "TXT")
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in records or []]  # type: ignore[attr-defined]

    async def addresses(self, host: str) -> list[str]:
        """AAAA and A addresses of `host`; IPv6 first when this machine has an IPv6 route."""
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        results = await asyncio.gather(self._query(host, "AAAA"), self._query(host, "A"), return_exceptions=True)
        v6, v4 = ([] if isinstance(r, BaseException) or r is None else [rr.address for rr in r]  # type: ignore[attr-defined]
                  for r in results)
        if not v6 and not v4:
            errors = [r for r in results if isinstance(r, BaseException)]
            for err in errors:
                if not isinstance(err, DNSError):
                    raise err
            if errors:
                raise errors[0]
            if all(r is None for r in results):
                raise NoSuchDomain(f"{host}: no such domain (NXDOMAIN)")
            return []
        return v6 + v4 if self._prefer_ipv6 else v4 + v6


def address_family(address: str) -> socket.AddressFamily:
    """AF_INET6 or AF_INET for an IP address string."""
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
