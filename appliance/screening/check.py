"""The screening at CONNECT on the MX listener: the DNSBL/DNSWL score and the pregreet test (postscreen(8)).

Only the MX listener (smtp, port 25) is screened, as postscreen guards port 25 only: submission clients
authenticate, and their dynamic addresses are what policy block lists (Spamhaus PBL) list. Clients in
outgoing_gateway.relay_networks are not screened either (postscreen_access_list's default permit_mynetworks).

What happens to a client:

- its DNSBL answers (cached per IP for dnsbl.ttl, else asked now, every zone at once) give a score. At or above
  dnsbl.threshold it is refused with 554 5.7.1 naming the zones: instead of the greeting when no ``220-`` was
  sent, else after the greeting, to every command. At or below dnsbl.allow_threshold it is allow-listed: the
  verdict DNSWL names the zones (greylisting skips it) and it skips the pregreet test. The score is left in
  DNSBL_SCORE for later checks. A zone that fails, times out or answers an error code counts nothing (fail
  open) and is logged; it is asked again on the next connection.
- unless it passed within pregreet.ttl or is allow-listed by a cached answer, it takes the pregreet test
  (screening/pregreet.py); the DNS queries run during the wait.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable

from appliance.auth.authenticator import canonical_ip
from appliance.config import Config
from appliance.config.dnsbl_codes import ERRORS
from appliance.config.model import ScreeningConfig
from appliance.pipeline.stages import Client, Outcome, Pipeline, Result, Stage, note, refuse
from appliance.pipeline.verdicts import DNSBL_SCORE, DNSWL, PREGREET
from appliance.screening.cache import ScreeningCache
from appliance.screening.dnsbl import ZoneAnswer, score, zones
from appliance.screening.lookup import DNSBLLookup
from appliance.screening.pregreet import PregreetTest

log = logging.getLogger("appliance.screening")

MX_LISTENER = "smtp"  # the CONNECT stage's argument on the MX listener (ListenerOptions.name)
CACHE_FILE = "screening.sqlite"


def register(pipeline: Pipeline, config: Config) -> None:
    """The screening at CONNECT when the config turns on the pregreet test or names DNSBL sites."""
    settings = config.screening
    if not settings.pregreet.enabled and not settings.dnsbl.sites:
        return
    cache = ScreeningCache(config.data_dir / CACHE_FILE, settings.pregreet.ttl, settings.dnsbl.ttl)
    outgoing = config.outgoing_gateway
    screening = Screening(settings, cache, DNSBLLookup(config.dns, settings.dnsbl.timeout),
                          relay_networks=outgoing.allows if outgoing is not None else None)
    pipeline.register(Stage.CONNECT, screening)

    async def close() -> None:
        cache.close()

    pipeline.on_stop(close)


class Screening:
    def __init__(self, settings: ScreeningConfig, cache: ScreeningCache, lookup: DNSBLLookup,
                 relay_networks: Callable[[str], bool] | None = None) -> None:
        self._settings = settings
        self._sites = settings.dnsbl.sites
        self._zones = zones(self._sites)
        self._cache = cache
        self._lookup = lookup
        self._relay = relay_networks

    def __call__(self, client: Client, transaction: None, listener: object) -> Outcome | Awaitable[Outcome]:
        if listener != MX_LISTENER or (self._relay is not None and self._relay(client.ip)):
            return None
        ip = canonical_ip(client.ip)
        cached = self._cache.dnsbl_answers(ip, self._zones) if self._zones else {}
        missing = [zone for zone in self._zones if zone not in cached]
        result = None if missing or not self._zones else self._judge(ip, cached)
        if result is not None and result.refused:
            return result
        allowed = result is not None and bool(dict(result.verdicts).get(DNSWL))
        pregreet = self._settings.pregreet
        if pregreet.enabled and not allowed and not self._cache.pregreet_passed(ip):
            # Set at once, not through the result: the engine sends the 220- line before the lookups are done.
            client.verdicts[PREGREET] = PregreetTest(ip, client, pregreet.wait, self._cache)
        if not missing:
            return result
        return self._ask(ip, cached, missing)

    async def _ask(self, ip: str, cached: dict[str, ZoneAnswer], missing: list[str]) -> Result:
        fresh = await self._lookup.ask(ip, missing)
        self._cache.dnsbl_store(ip, fresh)
        return self._judge(ip, {**cached, **fresh})

    def _judge(self, ip: str, answers: dict[str, ZoneAnswer]) -> Result:
        found = score(self._sites, answers)
        for answer in found.errors:
            _log_error(ip, answer)
        settings = self._settings.dnsbl
        if found.total >= settings.threshold:
            zones_named = ", ".join(found.blocked_by)
            log.warning("client=%s dnsbl score %g (threshold %g) listed by %s: refused", ip, found.total,
                        settings.threshold, zones_named)
            return refuse(f"554 5.7.1 Service unavailable; client [{ip}] blocked using {zones_named}")
        allowed = found.allowed_by if found.total <= settings.allow_threshold else ()
        if allowed:
            log.info("client=%s dnsbl score %g allow-listed by %s", ip, found.total, ", ".join(allowed))
        elif found.blocked_by or found.allowed_by:
            log.info("client=%s dnsbl score %g (listed by %s): below the threshold", ip, found.total,
                     ", ".join((*found.blocked_by, *found.allowed_by)))
        return note(verdicts=((DNSWL, allowed), (DNSBL_SCORE, found.total)))


def _log_error(ip: str, answer: ZoneAnswer) -> None:
    if answer.error is not None:
        log.warning("client=%s dnsbl %s: %s; counted as not listed (fail open)", ip, answer.zone, answer.error)
        return
    refusals = ", ".join(answer.refusals)
    if any(_is_error_code(text) for text in answer.refusals):
        reason = ("127.255.255.0/24 is the list's error code (query refused: a public or unregistered resolver); "
                  "DNSBLs need this host's own resolver in dns.nameservers")
    else:
        reason = "not a return code in 127.0.0.0/8 (a resolver that rewrites NXDOMAIN?)"
    log.warning("client=%s dnsbl %s answered %s: %s; counted as not listed", ip, answer.zone, refusals, reason)


def _is_error_code(text: str) -> bool:
    try:
        return ipaddress.ip_address(text) in ERRORS
    except ValueError:
        return False
