"""Where a recipient goes: the routing order of the MTA core, decided from the config alone.

local domain -> local mailbox; backup domain -> its primary hosts; forwarded domain -> its destinations;
otherwise the smarthost when one is set; otherwise by MX. Never by MX for a backup domain: its MX points here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import Config, HostPort

LOCAL = "local"
HOSTS = "hosts"
MX = "mx"


@dataclass(frozen=True)
class Route:
    kind: str  # LOCAL, HOSTS or MX
    key: str  # recipients with the same key share one connection / one delivery attempt
    retry_schedule: tuple[float, ...]
    hosts: tuple[HostPort, ...] = ()
    domain: str = ""


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class Router:
    def __init__(self, config: Config, is_local_domain: Callable[[str], bool] | None = None) -> None:
        """`is_local_domain` is the user directory's view (domains added at run time); default: the config."""
        self._config = config
        self._is_local = is_local_domain or (lambda domain: domain in config.local_domains)
        self._default_schedule = config.queue.retry_schedule
        # Relayed mail (MX or smarthost) follows the outgoing gateway's schedule when this host is one.
        self._relay_schedule = (config.outgoing_gateway.retry_schedule if config.outgoing_gateway
                                else config.queue.retry_schedule)

    def route(self, address: str) -> Route:
        domain = domain_of(address)
        config = self._config
        if config.primary is not None and self._is_local(domain):
            return Route(LOCAL, LOCAL, self._default_schedule, domain=domain)
        backup = config.backup_domains.get(domain)
        if backup is not None:
            assert config.backup_mx is not None
            return Route(HOSTS, "backup:" + domain, config.backup_mx.retry_schedule,
                         hosts=backup.primary_hosts, domain=domain)
        forward = config.forward_domains.get(domain)
        if forward is not None:
            assert config.incoming_gateway is not None
            return Route(HOSTS, "forward:" + domain, config.incoming_gateway.retry_schedule,
                         hosts=forward.destinations, domain=domain)
        smarthost = config.delivery.smarthost
        if smarthost is not None:
            # One connection to the smarthost carries recipients of every domain.
            return Route(HOSTS, f"smarthost:{smarthost}", self._relay_schedule, hosts=(smarthost,), domain=domain)
        return Route(MX, "mx:" + domain, self._relay_schedule, domain=domain)
