"""MTA-STS (RFC 8461): discovery in DNS, the policy fetched over HTTPS, its parser, a persistent cache, and
the MX name matching.

A domain has a policy when its TXT ``_mta-sts.<domain>`` holds exactly one valid ``v=STSv1`` record (§3.1).
The policy comes from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``, verified against the CA store,
without redirects (§3.3). It is kept in SQLite under data_dir for its max_age: a new id in DNS refetches it,
a failed refresh keeps the cached one until it expires (§5.1), and a restart keeps it too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx

from appliance.tlspolicy import results

log = logging.getLogger("appliance.tlspolicy")

MAX_AGE_LIMIT = 31557600  # §3.2: one year
MAX_POLICY_SIZE = 64 * 1024  # §3.3 asks for a limit; policies are a few hundred bytes
NEGATIVE_TTL = 300.0  # how long "no TXT record" is believed when DNS gives no TTL of its own
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_MX_PATTERN = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                         r"[A-Za-z0-9])?\.?$")
MODES = ("enforce", "testing", "none")


class PolicyError(Exception):
    """No usable policy: ``result_type`` says why in RFC 8460 terms (sts-policy-invalid, -fetch-error,
    sts-webpki-invalid)."""

    def __init__(self, result_type: str, reason: str) -> None:
        super().__init__(reason)
        self.result_type = result_type


@dataclass(frozen=True)
class Policy:
    """A parsed MTA-STS policy (§3.2)."""

    mode: str
    max_age: int
    mx: tuple[str, ...]
    text: str  # as fetched, for the cache and TLS-RPT's policy-string

    def matches(self, host: str) -> bool:
        """True when `host` matches one of the policy's mx patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(line for line in self.text.replace("\r\n", "\n").split("\n") if line.strip())


def parse_txt(records: Sequence[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records; None when none or several are valid STSv1 (§3.1)."""
    ids = [found for found in (_txt_id(r) for r in records if r.startswith("v=STSv1")) if found is not None]
    return ids[0] if len(ids) == 1 else None


def _txt_id(record: str) -> str | None:
    fields = [f.strip() for f in record.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing ";" is allowed (sts-text-record ends with an optional field-delim)
    if not fields or fields[0] != "v=STSv1":
        return None
    values: dict[str, str] = {}
    for item in fields[1:]:
        name, sep, value = item.partition("=")
        if not sep or not _FIELD_NAME.match(name) or name in values:
            return None
        values[name] = value
    policy_id = values.get("id")
    return policy_id if policy_id is not None and _ID.match(policy_id) else None


def parse_policy(text: str) -> Policy:
    """The policy body (§3.2); PolicyError(sts-policy-invalid) naming what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not _FIELD_NAME.match(key):
            raise _invalid(f"line {number}: not a 'key: value' line")
        if key == "mx":
            if not _MX_PATTERN.match(value) or len(value) > 253:
                raise _invalid(f"line {number}: mx {value!r} is not a host name or *.pattern")
            mx.append(value.lower().rstrip("."))
        elif key in fields:
            if key in ("version", "mode", "max_age"):
                raise _invalid(f"line {number}: {key} given twice")
        else:
            fields[key] = value
    if fields.get("version") != "STSv1":
        raise _invalid("version is not STSv1")
    mode = fields.get("mode")
    if mode not in MODES:
        raise _invalid(f"mode {mode!r} is not one of {', '.join(MODES)}")
    max_age_text = fields.get("max_age", "")
    if not max_age_text.isdigit() or len(max_age_text) > 10 or int(max_age_text) > MAX_AGE_LIMIT:
        raise _invalid(f"max_age {max_age_text!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    if mode != "none" and not mx:
        raise _invalid("no mx line")
    return Policy(mode, int(max_age_text), tuple(mx), text)


def _invalid(reason: str) -> PolicyError:
    return PolicyError(results.STS_POLICY_INVALID, reason)


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: case-insensitive; "*.example.com" matches one extra leading label, never the name itself."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return pattern == host


class PolicyCache:
    """The fetched policies by domain, in SQLite (survives restarts)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS policies (domain TEXT PRIMARY KEY, id TEXT NOT NULL, "
                         "policy TEXT NOT NULL, fetched REAL NOT NULL, expires REAL NOT NULL)")
        # The domains with a cached policy, so that a domain without one costs no query here.
        self._domains = {row[0] for row in self._db.execute("SELECT domain FROM policies")}

    def get(self, domain: str, now: float) -> tuple[str, Policy] | None:
        """The unexpired (id, policy) of `domain`; an expired one is dropped. A cache that cannot be read is a
        miss (the policy is fetched again), never a reason to deliver without it."""
        if domain not in self._domains:
            return None
        try:
            row = self._db.execute("SELECT id, policy, expires FROM policies WHERE domain = ?", (domain,)).fetchone()
            if row is not None and row[2] <= now:
                self._db.execute("DELETE FROM policies WHERE domain = ?", (domain,))
                self._domains.discard(domain)
                return None
        except sqlite3.Error as exc:
            log.error("MTA-STS: policy cache: %s", exc)
            return None
        if row is None:
            return None
        try:
            return row[0], parse_policy(row[1])
        except PolicyError:
            return None

    def put(self, domain: str, policy_id: str, policy: Policy, now: float) -> None:
        try:
            self._db.execute("INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?)",
                             (domain, policy_id, policy.text, now, now + policy.max_age))
        except sqlite3.Error as exc:
            log.error("MTA-STS: policy cache: cannot keep the policy of %s: %s", domain, exc)
            return
        self._domains.add(domain)

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class Lookup:
    """A domain's MTA-STS state: its policy, or why it has none usable (None, None: no policy at all)."""

    policy: Policy | None = None
    error: PolicyError | None = None


class MTASTS:
    """Discovery, fetch and cache of the MTA-STS policies of destination domains."""

    def __init__(
        self,
        cache: PolicyCache,
        nameservers: Sequence[str] = (),
        dns_port: int = 53,
        *,
        ca_file: Path | None = None,
        fetch_timeout: float = 10.0,
        https_port: int = 443,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`nameservers` empty: the system's. `https_port` is 443 except in tests."""
        self._cache = cache
        try:
            self._dns = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            self._dns = dns.asyncresolver.Resolver(configure=False)
        if nameservers:
            self._dns.nameservers = list(nameservers)
        self._dns.port = dns_port
        self._dns.lifetime = fetch_timeout
        self._ids: dict[str, tuple[float, str | None]] = {}  # domain -> (expires, TXT policy id), with its TTL
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._timeout = fetch_timeout
        self._https_port = https_port
        self._clock = clock

    async def lookup(self, domain: str) -> Lookup:
        """The policy to apply to `domain` now (§5.1)."""
        domain = domain.lower().rstrip(".")
        now = self._clock()
        policy_id = await self._policy_id(domain, now)
        cached = self._cache.get(domain, now)
        if cached is not None and (policy_id is None or cached[0] == policy_id):
            return Lookup(cached[1])  # §5.1: an unexpired policy stays when TXT is gone or unchanged
        if policy_id is None:
            return Lookup()
        try:
            policy = parse_policy(await self._fetch(domain))
        except PolicyError as exc:
            log.warning("MTA-STS: policy of %s: %s: %s%s", domain, exc.result_type, exc,
                        "; the cached policy stays in force" if cached else "")
            return Lookup(cached[1], exc) if cached else Lookup(None, exc)
        self._cache.put(domain, policy_id, policy, now)
        log.info("MTA-STS: policy of %s id=%s mode=%s max_age=%d", domain, policy_id, policy.mode, policy.max_age)
        return Lookup(policy)

    async def _policy_id(self, domain: str, now: float) -> str | None:
        """The TXT record's id, cached for the record's TTL: one lookup per domain and TTL."""
        known = self._ids.get(domain)
        if known is not None and known[0] > now:
            return known[1]
        try:
            answer = await self._dns.resolve(f"_mta-sts.{domain}.", "TXT", raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            self._ids[domain] = (now + NEGATIVE_TTL, None)
            return None
        except dns.exception.DNSException as exc:
            log.info("MTA-STS: TXT lookup for %s failed (%s): the cached policy, if any, applies", domain, exc)
            return None  # not remembered: asked again next time
        texts = [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer.rrset or ()]
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else NEGATIVE_TTL
        policy_id = parse_txt(texts)
        self._ids[domain] = (now + ttl, policy_id)
        return policy_id

    async def _fetch(self, domain: str) -> str:
        """GET the policy (§3.3): HTTPS verified for mta-sts.<domain>, no redirects, text/plain, size-limited."""
        host = f"mta-sts.{domain}"
        port = "" if self._https_port == 443 else f":{self._https_port}"
        url = f"https://{host}{port}/.well-known/mta-sts.txt"
        # The name is resolved with the appliance's DNS (not the system's), then verified by SNI as usual.
        address = await self._address(host)
        literal = f"[{address}]" if ":" in address else address
        try:
            async with httpx.AsyncClient(verify=self._ssl, follow_redirects=False, timeout=self._timeout,
                                         trust_env=False) as client:
                async with client.stream("GET", f"https://{literal}{port}/.well-known/mta-sts.txt",
                                         headers={"Accept": "text/plain", "Host": host},
                                         extensions={"sni_hostname": host}) as response:
                    if response.status_code != 200:
                        raise PolicyError(results.STS_POLICY_FETCH_ERROR, f"{url}: HTTP {response.status_code}")
                    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                    if media != "text/plain":
                        raise PolicyError(results.STS_POLICY_INVALID, f"{url}: media type {media!r}, not text/plain")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_POLICY_SIZE:
                            raise PolicyError(results.STS_POLICY_INVALID,
                                              f"{url}: larger than {MAX_POLICY_SIZE} bytes")
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in str(exc):
                raise PolicyError(results.STS_WEBPKI_INVALID, f"{url}: {exc}") from exc
            raise PolicyError(results.STS_POLICY_FETCH_ERROR, f"{url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise PolicyError(results.STS_POLICY_FETCH_ERROR, f"{url}: {exc}") from exc
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(results.STS_POLICY_INVALID, f"{url}: not UTF-8") from exc

    async def _address(self, host: str) -> str:
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(f"{host}.", rdtype, raise_on_no_answer=False, search=False)
            except dns.resolver.NXDOMAIN as exc:
                raise PolicyError(results.STS_POLICY_FETCH_ERROR, f"{host}: no such host") from exc
            except dns.exception.DNSException as exc:
                raise PolicyError(results.STS_POLICY_FETCH_ERROR, f"{host}: DNS lookup failed: {exc}") from exc
            if answer.rrset is not None:
                return str(answer.rrset[0].address)
        raise PolicyError(results.STS_POLICY_FETCH_ERROR, f"{host}: no A or AAAA record")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._cache.close()
