"""The validated, immutable configuration: built once at load, passed explicitly to the services.

The field defaults of these dataclasses are the only defaults of the configuration: the loader fills every key
a file leaves out from them, and reference.yml and the Ansible role defaults are tested against them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROLES = ("primary", "backup_mx", "incoming_gateway", "outgoing_gateway")
DEFAULT_RETRY_SCHEDULE = (600.0, 600.0, 600.0, 86400.0)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def field_default(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (its default_factory called); KeyError if it has none."""
    spec = {f.name: f for f in dataclasses.fields(cls)}[name]
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default (it is required)")


def workers_per_cpu() -> int:
    """`smtp.workers: auto`: one acceptor process per CPU when there are several, else 0 (one process)."""
    cpus = os.cpu_count() or 1
    return cpus if cpus > 1 else 0


def _frozen(obj: object, *names: str) -> None:
    """Store the mapping fields `names` of a frozen dataclass as read-only copies."""
    for name in names:
        object.__setattr__(obj, name, MappingProxyType(dict(getattr(obj, name))))


@dataclass(frozen=True)
class HostPort:
    """A destination or listen address; `host` is a name or an IP literal (no brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ListenConfig:
    smtp: tuple[HostPort, ...] = ()
    submission: tuple[HostPort, ...] = ()
    submissions: tuple[HostPort, ...] = ()
    imap: tuple[HostPort, ...] = ()
    imaps: tuple[HostPort, ...] = ()
    pop3: tuple[HostPort, ...] = ()
    pop3s: tuple[HostPort, ...] = ()
    managesieve: tuple[HostPort, ...] = ()
    web: tuple[HostPort, ...] = ()  # every role: the console, the API, /metrics and the well-known files (HTTPS)


@dataclass(frozen=True)
class TLSConfig:
    cert: Path | None = None
    key: Path | None = None
    plaintext_auth_on_loopback: bool = False


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 5.0


@dataclass(frozen=True)
class SMTPConfig:
    max_message_size: int = 26214400
    max_recipients: int = 100
    max_sessions: int = 5000
    idle_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command
    # SMTP acceptor processes beside the queue process; 0: everything in one process. The default ("auto" in
    # the file) is one per CPU on a host with several.
    workers: int = field(default_factory=workers_per_cpu)


@dataclass(frozen=True)
class LoginCacheConfig:
    """Recent successful logins, so that a client's next login skips argon2 (auth/cache.py)."""

    enabled: bool = True
    ttl: float = 300.0  # 0: off
    max_entries: int = 10_000


@dataclass(frozen=True)
class ImapConfig:
    """The primary's IMAP server. Full-text search: SEARCH BODY/TEXT from an SQLite FTS5 index per account."""

    full_text_search: bool = True
    fts_max_bytes: int = 1048576  # text indexed per message; the rest of a longer one is checked by reading it
    fts_autoindex: bool = False  # index at delivery (idle priority) rather than at the first search (Dovecot's)


@dataclass(frozen=True)
class AuthConfig:
    """Login-failure bans shared by SMTP submission, IMAP and POP3."""

    ban_threshold: int = 10
    ban_window: float = 600.0
    ban_duration: float = 3600.0
    exempt_loopback: bool = False
    login_cache: LoginCacheConfig = LoginCacheConfig()
    password_workers: int = 2  # argon2 threads; each check holds ~64 MiB while it runs


@dataclass(frozen=True)
class DeliveryConfig:
    smarthost: HostPort | None = None
    source_addresses: tuple[str, ...] = ()
    concurrency_per_destination: int = 10
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    connection_reuse_time: float = 2.0


@dataclass(frozen=True)
class QueueConfig:
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    lifetime: float = 5 * 86400.0


@dataclass(frozen=True)
class UserConfig:
    address: str
    password_hash: str | None = None
    quota: int = 0


@dataclass(frozen=True)
class PrimaryConfig:
    domains: tuple[str, ...]
    users: tuple[UserConfig, ...] = ()
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # read-only once built
    catch_all: Mapping[str, str] = field(default_factory=dict)  # read-only once built

    def __post_init__(self) -> None:
        _frozen(self, "aliases", "catch_all")


# How a backup MX or an incoming gateway knows which addresses of a domain exist, so that it refuses at RCPT TO
# what the primary would refuse instead of accepting it and bouncing it later to a sender that may be forged
# (backscatter): `list` (the domain's recipients, rendered by the roles from the primary's users, aliases and
# catch-alls), `callout` (ask the domain's own servers with an SMTP recipient callout, as Exim's callout and
# Postfix's reject_unverified_recipient do), or `none` (accept every address: the exception an administrator
# turns on knowingly).
VERIFY_MODES = ("list", "callout", "none")
# A callout that reached no destination: tempfail (450 4.4.1, the sender retries) or accept (and risk a bounce).
CALLOUT_UNREACHABLE = ("tempfail", "accept")


@dataclass(frozen=True)
class CalloutConfig:
    """The SMTP recipient callout of one role's domains: EHLO, MAIL FROM:<>, RCPT TO, RSET, QUIT at each
    destination in order until one gives a final answer; the answers are cached per address in SQLite under
    data_dir, shared by the acceptor processes."""

    timeout: float = 10.0  # for one destination, from the connect to the RCPT reply
    positive_ttl: float = 7 * 86400.0  # an address the destination took is believed this long (Postfix: 7d)
    negative_ttl: float = 3 * 3600.0  # an address it refused, this long (Postfix's negative refresh: 3h)
    unreachable: str = "tempfail"  # no destination gave a final answer: tempfail or accept


@dataclass(frozen=True)
class BackupDomain:
    primary_hosts: tuple[HostPort, ...]
    # The valid addresses (lower case) for verify=list; "@domain" stands for every address (a catch-all).
    recipients: frozenset[str] = frozenset()
    verify: str = "callout"  # one of VERIFY_MODES; in a file: list when recipients are given, else callout


@dataclass(frozen=True)
class BackupMXConfig:
    domains: Mapping[str, BackupDomain]
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE  # in a file: queue.retry_schedule when left out
    callout: CalloutConfig = CalloutConfig()

    def __post_init__(self) -> None:
        _frozen(self, "domains")


@dataclass(frozen=True)
class ForwardDomain:
    destinations: tuple[HostPort, ...]
    recipients: frozenset[str] = frozenset()  # as BackupDomain's
    verify: str = "callout"  # as BackupDomain's


@dataclass(frozen=True)
class IncomingGatewayConfig:
    domains: Mapping[str, ForwardDomain]
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE  # in a file: queue.retry_schedule when left out
    callout: CalloutConfig = CalloutConfig()

    def __post_init__(self) -> None:
        _frozen(self, "domains")


@dataclass(frozen=True)
class EgressAddress:
    """One sending address of the outgoing gateway's pool: each connection leaves from one, with its HELO name."""

    address: str
    helo: str | None = None  # None: the host name


# The replies that mean "your sending address is blocked" (searched case-insensitively in "code enhanced text"):
# DNSBL-based refusals as Postfix, Exim and Spamhaus word them, Microsoft's S3150 and 5.7.606-5.7.608, Gmail's
# 421 4.7.0 / 550 5.7.1 reputation texts.
DEFAULT_REJECTION_TEXTS: tuple[str, ...] = (
    r"blocked using",
    r"listed at",
    r"bl[ao]ck ?listed",
    r"spamhaus",
    r"\bS3150\b",
    r"\b5\.7\.60[678]\b",
    r"IP reputation",
    r"reputation of the sending IP",
    r"poor reputation",
    r"Client host \[[^\]]*\] blocked",
)


@dataclass(frozen=True)
class EgressFailoverConfig:
    """When an egress address counts as blacklisted, and when it comes back (outgoing_gateway.failover)."""

    dnsbl: tuple[str, ...] = ()  # zones each egress address is looked up in (RFC 5782), with the host's resolver
    check_interval: float = 1800.0  # between two DNSBL rounds
    clear_for: float = 6 * 3600.0  # a suspended address comes back once it has been clear this long
    # An address is suspended when this many different destination domains refused it with one of
    # rejection_texts within rejection_window: one odd reply does not suspend.
    rejection_threshold: int = 3
    rejection_window: float = 3600.0
    rejection_texts: tuple[str, ...] = DEFAULT_REJECTION_TEXTS  # regexes, case-insensitive, searched in replies
    # How many times one address may come back by itself after a suspension within 24 hours (0: never by
    # itself); past that it stays suspended: hopping between addresses looks like snowshoe spam.
    max_changes_per_day: int = 2


@dataclass(frozen=True)
class OutgoingGatewayConfig:
    relay_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE  # in a file: queue.retry_schedule when left out
    # The pool of sending addresses; empty: the host's default (delivery.source_addresses).
    egress: tuple[EgressAddress, ...] = ()
    failover: EgressFailoverConfig = EgressFailoverConfig()

    def allows(self, ip: str) -> bool:
        """True when a client at `ip` may relay (RFC 5321 §3.6.2: relaying is an explicit grant)."""
        return _in_networks(ip, self.relay_networks)


SCANNER_TYPES = ("clamav", "spamassassin", "rspamd", "milter")
# How much of a message each kind of scanner is given at most, in bytes, when its entry does not say (0: all of
# it). A larger message is passed with a header saying it was not scanned. clamav: Debian's clamd.conf has
# StreamMaxLength 25M; spamassassin: spamc's own default --max-size (500 KB); rspamd: its max_message default
# (50 MB); milter: a milter sees every message, as Postfix gives it.
DEFAULT_MAX_SCAN_SIZE: Mapping[str, int] = MappingProxyType(
    {"clamav": 25 * 1024 * 1024, "spamassassin": 500 * 1024, "rspamd": 50 * 1024 * 1024, "milter": 0})
ON_ERROR = ("tempfail", "accept")
VIRUS_ACTIONS = ("reject", "quarantine")


@dataclass(frozen=True)
class UnixSocket:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class ScannerConfig:
    """One entry of filters.scanners: a daemon the filter engine asks about every message."""

    type: str  # one of SCANNER_TYPES
    address: HostPort | UnixSocket
    name: str = ""  # unique among the scanners; the loader gives the type when left out
    timeout: float = 30.0  # for the whole scan of one message (connect, send, answer)
    max_scan_size: int = 0  # bytes; the loader gives DEFAULT_MAX_SCAN_SIZE[type] when left out
    on_error: str = "tempfail"  # daemon down, timeout, protocol error: 451 4.7.1 (tempfail) or pass, marked
    settings_id: str | None = None  # rspamd: the settings id sent with every request
    user: str | None = None  # spamassassin: the user whose preferences spamd applies


@dataclass(frozen=True)
class SpamPolicy:
    """Score thresholds (the highest score any spam scanner gave); null: that action is off."""

    add_header: float | None = 5.0  # X-Spam-Flag: YES; the primary files it into Junk
    quarantine: float | None = None
    reject: float | None = 15.0  # 550 5.7.1 in the session (rspamd's default reject score)


@dataclass(frozen=True)
class FiltersConfig:
    scanners: tuple[ScannerConfig, ...] = ()
    spam: SpamPolicy = SpamPolicy()
    # Per recipient domain, replacing the global spam policy for mail to that domain.
    domains: Mapping[str, SpamPolicy] = field(default_factory=dict)  # read-only once built
    virus_action: str = "reject"  # or "quarantine"
    scan_authenticated: bool = False  # scan mail from authenticated submission users too
    # The circuit breaker: a scanner that failed this many times in a row is not asked for breaker_pause,
    # its on_error applying at once; logged once when it opens and once when it closes.
    breaker_failures: int = 5
    breaker_pause: float = 30.0
    # Hosts whose X-Spam-* and X-Mailfleet-Scan headers are believed (the fleet's incoming gateways); the
    # same headers from anyone else are removed at DATA.
    trusted_gateways: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def __post_init__(self) -> None:
        _frozen(self, "domains")

    def policy_for(self, domain: str) -> SpamPolicy:
        return self.domains.get(domain.lower(), self.spam)

    def trusts(self, ip: str) -> bool:
        """True when `ip` is one of the trusted gateways."""
        return _in_networks(ip, self.trusted_gateways)


# The sections of abuse detection and sender authentication (issue 15): each is filled in by its own module's
# work; the loader builds them from the file's sections of the same name.


@dataclass(frozen=True)
class LimitSet:
    """One set of per-client limits; 0: no limit. The rates count events per LimitsConfig.rate_window."""

    sessions: int = 0  # concurrent SMTP sessions (Postfix: smtpd_client_connection_count_limit)
    connection_rate: int = 0  # connections (smtpd_client_connection_rate_limit)
    message_rate: int = 0  # MAIL FROM commands (smtpd_client_message_rate_limit)
    recipient_rate: int = 0  # RCPT TO commands (smtpd_client_recipient_rate_limit)
    auth_rate: int = 0  # AUTH commands (smtpd_client_auth_rate_limit)


def _exempt_default() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class LimitsConfig:
    """Per-client limits (as Postfix's anvil): concurrent sessions, rates of connections, messages, recipients
    and AUTH attempts, per client IP and per network; the reply over a limit is 421 4.7.0 with the reason.

    Postfix's anvil limits only the sessions (50) by default and leaves the rates off; here the rates are on,
    at flood levels no single legitimate MTA reaches (a client at a limit gets a 421 and comes back later).
    """

    # Clients no limit applies to (Postfix: smtpd_client_event_limit_exceptions, $mynetworks).
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default_factory=_exempt_default)
    rate_window: float = 60.0  # what the rates count over (Postfix: anvil_rate_time_unit)
    ipv4_prefix: int = 24  # a "network" is the client's /24 ...
    ipv6_prefix: int = 64  # ... or /64
    client: LimitSet = LimitSet(sessions=50, connection_rate=600, message_rate=1200, recipient_rate=6000,
                                auth_rate=60)  # per client IP
    network: LimitSet = LimitSet(sessions=200, connection_rate=1200, message_rate=2400, recipient_rate=12000,
                                 auth_rate=120)  # all clients of one network together
    # A client in outgoing_gateway.relay_networks: this set per IP, instead of client and network.
    relay: LimitSet = LimitSet(sessions=500)
    # An authenticated user (per login, whatever its address): its messages and recipients count against this
    # set instead of its address's; sessions, connections and AUTH are counted before the login is known.
    authenticated: LimitSet = LimitSet(message_rate=120, recipient_rate=1200)
    # IMAP and POP3 sessions per client IP, both together (Dovecot's mail_max_userip_connections is 10 per user
    # and IP); 0: no limit (the process's 2,000 still hold).
    mailbox_sessions: int = 50

    def exempts(self, ip: str) -> bool:
        """True when no limit applies to a client at `ip`."""
        return _in_networks(ip, self.exempt)


@dataclass(frozen=True)
class DictionaryConfig:
    """Dictionary attacks: unknown recipients (550 5.1.1) slow the RCPT replies down (the tarpit), then ban."""

    enabled: bool = True
    session_threshold: int = 5  # unknown recipients in one session, after which its RCPT replies slow down
    ip_threshold: int = 10  # unknown recipients from one address within window: its RCPT replies slow down
    ban_after: int = 30  # unknown recipients from one address within window: the address is banned
    window: float = 600.0
    tarpit_delay: float = 1.0  # the first delay; it doubles with each further unknown recipient ...
    tarpit_max: float = 20.0  # ... up to this, well under the client's RCPT timeout (RFC 5321 §4.5.3.2.3: 5 min)
    ban_duration: float = 3600.0  # a first dictionary ban; repeat offenders' bans escalate as any ban's


@dataclass(frozen=True)
class BansConfig:
    """Bans for abuse (dictionary attacks) and login failures alike: escalation, the exempt list, the tarpit.

    The first ban of an address lasts its reason's duration (auth.ban_duration, dictionary.ban_duration); each
    further ban within ``memory`` of the last one ``escalation`` times the one before, up to ``max_duration``.
    """

    escalation: float = 4.0
    max_duration: float = 30 * 86400.0
    memory: float = 30 * 86400.0  # how long after its last ban ended an address still counts as a repeat offender
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # never banned, never tarpitted
    dictionary: DictionaryConfig = DictionaryConfig()

    def is_exempt(self, ip: str) -> bool:
        return _in_networks(ip, self.exempt)


@dataclass(frozen=True)
class PregreetConfig:
    """The pregreet test on the MX listener (postscreen_greet_action): a client that talks before the end of a
    multi-line 220 greeting is refused for the whole session."""

    enabled: bool = False
    wait: float = 6.0  # postscreen_greet_wait: between the "220-" line and the final "220 " line
    ttl: float = 86400.0  # postscreen_greet_ttl: a client that passed is not tested again for this long


# An inclusive range of DNSBL return codes (A records under 127.0.0.0/8, RFC 5782 §2.1).
CodeRange = tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]


@dataclass(frozen=True)
class DNSBLSite:
    """One entry of screening.dnsbl.sites (postscreen_dnsbl_sites): a zone, its weight, the codes that count.

    A zone may be listed more than once, each entry with its own codes and weight; it is asked once."""

    zone: str
    weight: float = 1.0  # negative: an allow list (DNSWL)
    codes: tuple[CodeRange, ...] = ()  # empty: any answer in 127.0.0.0/8 except 127.255.255.0/24 (errors)


@dataclass(frozen=True)
class DNSBLConfig:
    sites: tuple[DNSBLSite, ...] = ()
    threshold: float = 1.0  # a score at or above: 554 5.7.1 naming the zones (postscreen_dnsbl_threshold)
    allow_threshold: float = -1.0  # at or below: allow-listed, verdict DNSWL (postscreen_dnsbl_allowlist_threshold)
    timeout: float = 3.0  # for all zones together; a failure or timeout counts nothing (fail open)
    ttl: float = 3600.0  # answers are cached per client IP this long


@dataclass(frozen=True)
class ScreeningConfig:
    """The screening before and at the greeting (as Postfix's postscreen): pregreet test, DNSBL and DNSWL."""

    pregreet: PregreetConfig = PregreetConfig()
    dnsbl: DNSBLConfig = DNSBLConfig()


@dataclass(frozen=True)
class GreylistConfig:
    """Greylisting (off by default): the triplet, its delays, the auto-allow, the clients it skips.

    The defaults are postgrey's (--delay, --retry-window, --max-age, --auto-whitelist-clients).
    """

    enabled: bool = False
    delay: float = 300.0  # a retry sooner than this after the first attempt is greylisted again
    retry_window: float = 2 * 86400.0  # a first retry later than this after the first attempt starts over
    lifetime: float = 35 * 86400.0  # a passed triplet, an auto-allowed network: kept this long after last seen
    auto_allow: int = 5  # a client network whose triplets passed this often is greylisted no more; 0: off
    auto_allow_interval: float = 3600.0  # passes of one network closer together than this count once
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # clients never greylisted
    exempt_recipients: frozenset[str] = frozenset()  # lower-case domains and addresses never greylisted

    def exempts_client(self, ip: str) -> bool:
        return _in_networks(ip, self.exempt)

    def exempts_recipient(self, address: str) -> bool:
        address = address.lower()
        return address in self.exempt_recipients or address.rpartition("@")[2] in self.exempt_recipients


# What a DMARC failure gets under the sender domain's policy (RFC 7489 §6.3 p=reject / p=quarantine): refused
# in the session with 550 5.7.1, filed into Junk, or only the Authentication-Results header saying so.
DMARC_ACTIONS = ("reject", "junk", "none")


@dataclass(frozen=True)
class DmarcActions:
    """What a DMARC failure of each published policy gets, for mail to one recipient domain (or all)."""

    dmarc_reject: str = "reject"  # p=reject: one of DMARC_ACTIONS
    dmarc_quarantine: str = "junk"  # p=quarantine: one of DMARC_ACTIONS


@dataclass(frozen=True)
class SenderAuthConfig:
    """SPF, DKIM, DMARC and ARC verification on the way in, the Authentication-Results header and its policy."""

    enabled: bool = False  # the roles turn it on where mail arrives from outside
    authserv_id: str | None = None  # RFC 8601 §2.5 authserv-id; None: the host name
    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    arc: bool = True
    dmarc_reject: str = "reject"
    dmarc_quarantine: str = "junk"
    # Per recipient domain, replacing the two keys above for mail to that domain.
    domains: Mapping[str, DmarcActions] = field(default_factory=dict)  # read-only once built
    # MAIL FROM a domain the fleet hosts, from a client that is not authenticated, not in relay_networks and
    # not a trusted gateway: 550 5.7.1.
    refuse_local_senders: bool = True

    def __post_init__(self) -> None:
        _frozen(self, "domains")

    def actions_for(self, domain: str) -> DmarcActions:
        """The DMARC actions for mail to ``domain``."""
        return self.domains.get(domain.lower()) or DmarcActions(self.dmarc_reject, self.dmarc_quarantine)


# RFC 6376 §5.4.1: the fields a DKIM signer should cover (signing/signer.py signs each as often as it occurs, and
# From, Subject, To, Cc, Date, Reply-To and Message-ID once more, §8.15).
DKIM_SIGNED_HEADERS = (
    "from", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to", "references",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id", "sender",
    "mime-version", "content-type", "content-transfer-encoding", "content-id", "content-description",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post",
    "list-owner", "list-archive", "feedback-id", "tls-report-domain", "tls-report-submitter",
)


@dataclass(frozen=True)
class DKIMPublishConfig:
    """RFC 2136 dynamic updates, signed with TSIG (RFC 8945), that publish and withdraw the selectors' records."""

    server: str  # the primary nameserver of the zone that takes the updates (an IP address or host name)
    key_name: str  # the TSIG key's name
    key_secret: str  # the TSIG key's secret, base64
    port: int = 53
    zone: str | None = None  # the zone to update; None: the signing domain itself
    key_algorithm: str = "hmac-sha256"


@dataclass(frozen=True)
class DKIMConfig:
    """DKIM signing (RFC 6376 rsa-sha256, RFC 8463 ed25519-sha256) of the mail this host sends for the fleet's
    domains, and ARC sealing (RFC 8617) of the mail it forwards. Keys live under keys_dir, one folder a domain."""

    enabled: bool = False  # the roles turn it on where mail leaves the fleet
    keys_dir: Path | None = None  # None: data_dir/dkim
    retire_after: float = 7 * 86400.0  # an old selector stays published this long after a rotation
    check_interval: float = 300.0  # the queue process activates visible selectors and retires expired ones
    publish: DKIMPublishConfig | None = None  # None: the administrator or the dns_records role publishes
    arc_seal: bool = True  # ARC-seal what this host forwards (incoming gateway, aliases to outside)
    arc_domain: str | None = None  # the domain whose key seals; None: the first primary/forwarded one with keys
    # The fields a DKIM signature covers (RFC 6376 §5.4.1), lower case; From is always one of them.
    headers: tuple[str, ...] = DKIM_SIGNED_HEADERS


@dataclass(frozen=True)
class SRSConfig:
    """The Sender Rewriting Scheme for mail forwarded to an outside address, so that SPF passes there."""

    enabled: bool = False
    domain: str | None = None  # the domain of the rewritten senders; None: the first primary domain
    secrets: tuple[str, ...] = ()  # the first signs, every one verifies (a rotation keeps the old one a while)
    max_age: float = 21 * 86400.0  # a bounce to an older rewritten address is refused


@dataclass(frozen=True)
class SieveConfig:
    """Users' Sieve filters at local delivery (RFC 5228), with the administrator's scripts around them."""

    enabled: bool = True
    global_before: Path | None = None  # run before every user's script (Pigeonhole's sieve_before)
    global_after: Path | None = None  # run after it, while the implicit keep remains (sieve_after)
    max_script_size: int = 65536  # bytes of one script (ManageSieve refuses larger, delivery skips them)
    max_scripts: int = 16  # scripts one user may store
    max_redirects: int = 4  # redirect actions of one delivery; more is a runtime error (the message stays)
    vacation_min_days: int = 1  # RFC 5230 §4.1: a script's :days is raised to this
    vacation_max_days: int = 30  # and lowered to this


@dataclass(frozen=True)
class ShapingLimits:
    """The budget of one destination; 0: no limit."""

    connections: int = 0  # sessions in use at once (Postfix: default_destination_concurrency_limit)
    messages_per_minute: int = 0  # messages sent, evenly spaced (Postfix: default_destination_rate_delay)


# Temporary replies that mean "slow down" without a 4.7.x code (regular expressions, case-insensitive), such as
# Microsoft's "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit".
DEFAULT_THROTTLE_TEXTS = ("rate limit", "too many (connections|sessions|messages)", "concurrent .*connections",
                          "throttl", "unexpected volume")


@dataclass(frozen=True)
class ShapingConfig:
    """Per destination delivery shaping: how fast this host sends to one domain or mail provider, and how it
    backs off when the destination says it is sending too fast."""

    enabled: bool = True
    default: ShapingLimits = ShapingLimits()  # for destinations without an entry in `destinations`
    # Domain -> its budget; matched against the recipient domain, then the MX host names (google.com: every
    # domain whose MX is under google.com shares one budget). Read-only once built.
    destinations: Mapping[str, ShapingLimits] = field(default_factory=dict)
    backoff: float = 300.0  # the first back-off after a throttling reply
    backoff_max: float = 7200.0  # the back-off doubles while throttling continues, up to this
    throttle_texts: tuple[str, ...] = DEFAULT_THROTTLE_TEXTS
    max_wait: float = 5.0  # a delivery waits this long at most for a session slot or a rate token, else defers

    def __post_init__(self) -> None:
        _frozen(self, "destinations")


@dataclass(frozen=True)
class OutboundTLSConfig:
    """The TLS policies of delivery: MTA-STS (RFC 8461) and DANE (RFC 7672) make TLS required and verified for
    the destinations that publish them; a required TLS that fails defers the message."""

    mta_sts: bool = True
    dane: bool = False  # needs a DNSSEC-validating resolver (resolver)
    resolver: tuple[HostPort, ...] = ()  # the validating resolver for TLSA lookups (its AD bit is trusted)
    ca_file: Path | None = None  # the CAs MTA-STS trusts (policy fetch, MX certificates); None: the system's
    fetch_timeout: float = 10.0  # seconds for an MTA-STS policy fetch and for a DANE lookup


@dataclass(frozen=True)
class TLSReportsConfig:
    """TLS-RPT (RFC 8460): daily aggregate reports of the TLS results per policy domain, to its rua."""

    enabled: bool = False
    organization: str | None = None  # the report's organization-name; None: the host name
    contact: str | None = None  # contact-info; None: postmaster@ the first primary domain, else @ the host name
    from_address: str | None = None  # From and envelope sender of the mailed reports; None: tlsrpt@ the host name
    send_delay: float = 900.0  # reports leave at a random moment this long after midnight UTC (RFC 8460 §4.1)
    https_timeout: float = 30.0  # per POST to an https: rua
    keep: float = 14 * 86400.0  # the counts of older days are pruned


def _in_networks(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


# ---------------------------------------------------------------------------------------------- web (web/)
# One settings class per part of the web service; each has its own loader function (config/loader.py, _web_*)
# and its own block under `web:` in reference.yml.


@dataclass(frozen=True)
class WebAccessConfig:
    """Who may use the console and the API: sessions, login refusals, API tokens, the audit log (web/access.py)."""

    session_lifetime: float = 8 * 3600.0  # a console session ends this long after its login
    idle_timeout: float = 3600.0  # ... or this long after its last request


@dataclass(frozen=True)
class WebFleetConfig:
    """The fleet console: every node's state through its node API, with the token Ansible distributes."""


@dataclass(frozen=True)
class WebMetricsConfig:
    """/metrics for Prometheus."""


@dataclass(frozen=True)
class WebWellKnownConfig:
    """MTA-STS policy hosting, Thunderbird autoconfig, Outlook autodiscover."""


@dataclass(frozen=True)
class WebmailConfig:
    """Roundcube beside the primary: the password change it asks of the directory (web/webmail.py)."""


@dataclass(frozen=True)
class WebConfig:
    access: WebAccessConfig = WebAccessConfig()
    fleet: WebFleetConfig = WebFleetConfig()
    metrics: WebMetricsConfig = WebMetricsConfig()
    wellknown: WebWellKnownConfig = WebWellKnownConfig()
    webmail: WebmailConfig = WebmailConfig()


@dataclass(frozen=True)
class Config:
    hostname: str
    roles: tuple[str, ...]
    data_dir: Path = Path("/var/lib/mailfleet")
    log_level: str = "info"
    listen: ListenConfig = ListenConfig()
    tls: TLSConfig = TLSConfig()
    dns: DNSConfig = DNSConfig()
    smtp: SMTPConfig = SMTPConfig()
    auth: AuthConfig = AuthConfig()
    imap: ImapConfig = ImapConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    queue: QueueConfig = QueueConfig()
    filters: FiltersConfig = FiltersConfig()
    limits: LimitsConfig = LimitsConfig()
    bans: BansConfig = BansConfig()
    screening: ScreeningConfig = ScreeningConfig()
    greylisting: GreylistConfig = GreylistConfig()
    sender_auth: SenderAuthConfig = SenderAuthConfig()
    dkim: DKIMConfig = DKIMConfig()
    srs: SRSConfig = SRSConfig()
    sieve: SieveConfig = SieveConfig()
    shaping: ShapingConfig = ShapingConfig()
    outbound_tls: OutboundTLSConfig = OutboundTLSConfig()
    tls_reports: TLSReportsConfig = TLSReportsConfig()
    web: WebConfig = WebConfig()
    primary: PrimaryConfig | None = None
    backup_mx: BackupMXConfig | None = None
    incoming_gateway: IncomingGatewayConfig | None = None
    outgoing_gateway: OutgoingGatewayConfig | None = None
    source: str = "<memory>"

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def local_domains(self) -> frozenset[str]:
        return frozenset(self.primary.domains) if self.primary else frozenset()

    @property
    def srs_domain(self) -> str | None:
        """The domain of the SRS addresses: srs.domain, else the first primary domain."""
        if self.srs.domain is not None:
            return self.srs.domain
        return self.primary.domains[0] if self.primary and self.primary.domains else None

    @property
    def backup_domains(self) -> Mapping[str, BackupDomain]:
        return self.backup_mx.domains if self.backup_mx else _EMPTY

    @property
    def forward_domains(self) -> Mapping[str, ForwardDomain]:
        return self.incoming_gateway.domains if self.incoming_gateway else _EMPTY

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def dkim_dir(self) -> Path:
        return self.dkim.keys_dir or self.data_dir / "dkim"
