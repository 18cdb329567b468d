"""Password authentication for SMTP submission, IMAP and POP3, with per-IP failure counting and bans.

One ``Authenticator`` instance is shared by all protocol servers of a process; the attempts and the bans live in
the ban store (auth/bans.py, SQLite) so that several mailfleet processes on the host count together, the way
fail2ban or Dovecot's auth penalty would see them.

A login is counted before its password is checked, not after: a client that opens a hundred sessions and sends
a hundred passwords at once gets ``auth.ban_threshold`` of them checked, the rest refused unchecked, and no
password at all is checked once it is banned, even in a session that connected before the ban.

A successful check is remembered for ``auth.login_cache.ttl`` (auth/cache.py): the next login of that user
with that password, from any client that passes the ban check, skips argon2. The cache sits behind the ban
check and the attempt's reservation, and a hit settles the attempt as a success, so bans count exactly as
without it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import pathlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from appliance.auth.addresses import AddressError, normalize_address
from appliance.auth.bans import BanStore, canonical_ip
from appliance.auth.cache import LoginCache
from appliance.auth.directory import Directory
from appliance.config.model import AuthConfig, BansConfig
from appliance.message.printable import printable

log = logging.getLogger("appliance.auth")

__all__ = ["Authenticator", "canonical_ip", "is_loopback"]


def is_loopback(client_ip: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (also in IPv4-mapped form)."""
    try:
        return ipaddress.ip_address(canonical_ip(client_ip)).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Checks passwords against the directory and bans IPs that fail too often.

    ``authenticate`` runs argon2 in a small dedicated thread pool (``auth.password_workers`` threads): each
    verification takes ~64 MiB and tens of milliseconds, so the pool both keeps the event loop free and bounds
    memory under a flood. The ban store's writes run in a thread of their own, one at a time, never queued
    behind argon2. Logins answered from the login cache never wait for the pool.
    """

    def __init__(
        self,
        directory: Directory,
        settings: AuthConfig | None = None,
        *,
        bans: BanStore | None = None,
        bans_settings: BansConfig | None = None,
        state_path: pathlib.Path | str | None = None,
        clock: Callable[[], float] = time.time,
        cache_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.settings = settings or AuthConfig()
        self._own_store = bans is None
        # The service hands in its one store (data_dir/bans.sqlite); alone (tests) the authenticator opens one.
        self.bans = bans if bans is not None else BanStore(
            state_path if state_path is not None else directory.db_path, settings, bans_settings, clock)
        self._workers = self.settings.password_workers
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="argon2")
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bans")
        self.cache = LoginCache(clock=cache_clock)
        self._configure_cache()

    def _configure_cache(self) -> None:
        cache = self.settings.login_cache
        self.cache.configure(cache.ttl if cache.enabled else 0.0, cache.max_entries)

    def reconfigure(self, settings: AuthConfig) -> None:
        """SIGHUP: the login cache's limits and the number of password threads from now on (checks running in
        the old pool finish there)."""
        self.settings = settings
        self._configure_cache()
        if settings.password_workers != self._workers:
            old, self._workers = self._pool, settings.password_workers
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="argon2")
            old.shutdown(wait=False)

    def set_directory(self, directory: Directory) -> None:
        """SIGHUP: the users, aliases and passwords of a new config; bans and their counts stay. Cached logins
        whose user's hash the new config changed (or whose user it removed) go at once."""
        self.directory = directory
        dropped = self.cache.retain(lambda user, verified: directory.password_hash(user) == verified)
        if dropped:
            log.info("login cache: %d login(s) dropped, their users' passwords changed with the config", dropped)

    def is_banned(self, client_ip: str) -> bool:
        """Servers call this at connect (and before each AUTH) to refuse banned clients early."""
        return self.bans.is_banned(client_ip)

    async def authenticate(self, username: str, password: str, client_ip: str) -> str | None:
        """Canonical address of the user when the password matches, else None (failure counted).

        The attempt is reserved in the ban store first: a banned client, or one with ``auth.ban_threshold``
        attempts in flight or failed in this window, gets None without its password being checked, and without
        the login cache being asked. Then the cache, then argon2; a hit settles the attempt as a success.
        """
        store, ip = self.bans, canonical_ip(client_ip)
        loop = asyncio.get_running_loop()
        attempt = None
        if not store.exempt(client_ip):
            attempt = await loop.run_in_executor(self._db, store.reserve_attempt, client_ip, username)
            if attempt is None:
                banned = store.is_banned(client_ip)
                if banned:
                    self._forget_banned(ip)
                why = "banned" if banned else (
                    f"{store.auth.ban_threshold} attempts in flight or failed within {store.auth.ban_window:g}s")
                log.info("authentication from %s refused unchecked (user '%s'): %s", ip, printable(username, 64), why)
                return None
        address, cached = None, False
        try:
            if username and password:
                address = self._cached(username, password, ip)
                cached = address is not None
                if not cached:
                    address = await loop.run_in_executor(self._pool, self._verify, username, password, ip,
                                                         attempt is not None)
            if attempt is not None:
                ban = await loop.run_in_executor(self._db, store.settle_attempt, attempt, client_ip,
                                                 address is not None)
                if ban is not None:
                    self._forget_banned(ip)
        except asyncio.CancelledError:
            # The session went away mid-check: the guess was made, so it counts (a quick write, once).
            if attempt is not None:
                store.settle_attempt(attempt, client_ip, False)
            raise
        if address is not None:
            if cached:
                stats = self.cache.stats
                log.info("user %s authenticated from %s (login cache: %d hits, %d misses)", address, ip,
                         stats.hits, stats.misses)
            else:
                log.info("user %s authenticated from %s", address, ip)
            return address
        log.info("authentication failed for '%s' from %s", printable(username, 64), ip)
        return None

    def _cached(self, username: str, password: str, ip: str) -> str | None:
        """The canonical user when the cache proves this password, else None (one SQLite read on a hit, to
        see that the hash it was checked against is still the user's)."""
        if not self.cache.enabled:
            return None
        try:
            user = normalize_address(username)
        except AddressError:
            return None
        if not self.cache.lookup(user, password, self.directory.password_hash):
            return None
        self.cache.note_ip(user, password, ip)
        return user

    def _forget_banned(self, ip: str) -> None:
        dropped = self.cache.forget_ip(ip)
        if dropped:
            log.info("login cache: %d login(s) used from %s dropped, it is banned", dropped, ip)

    def _verify(self, username: str, password: str, ip: str, counted: bool) -> str | None:
        """In the argon2 pool: the password check, unless the client was banned while this one waited its
        turn (by its other sessions' failures, by a dictionary attack, by hand). A success goes to the cache."""
        if counted and self.bans.is_banned(ip):
            return None
        directory = self.directory
        verified = directory.verify(username, password)
        if verified is None:
            return None
        user, password_hash = verified
        self.cache.store(user, password, password_hash, ip)
        return user

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._db.shutdown(wait=True)
        if self._own_store:
            self.bans.close()
