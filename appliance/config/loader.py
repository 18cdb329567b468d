"""Load mailfleet.yml and validate every key: one clear error line naming the key path and the reason."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from appliance.config.dnsbl_codes import parse_codes
from appliance.config.model import (
    CALLOUT_UNREACHABLE,
    DEFAULT_MAX_SCAN_SIZE,
    DMARC_ACTIONS,
    ON_ERROR,
    ROLES,
    SCANNER_TYPES,
    VERIFY_MODES,
    VIRUS_ACTIONS,
    AuthConfig,
    BackupDomain,
    BackupMXConfig,
    BansConfig,
    CalloutConfig,
    CodeRange,
    Config,
    DeliveryConfig,
    DictionaryConfig,
    DKIMConfig,
    DKIMPublishConfig,
    DmarcActions,
    DNSBLConfig,
    DNSBLSite,
    DNSConfig,
    EgressAddress,
    EgressFailoverConfig,
    FiltersConfig,
    ForwardDomain,
    GreylistConfig,
    HostPort,
    ImapConfig,
    IncomingGatewayConfig,
    LimitsConfig,
    LimitSet,
    ListenConfig,
    LoginCacheConfig,
    OutboundTLSConfig,
    OutgoingGatewayConfig,
    PregreetConfig,
    PrimaryConfig,
    QueueConfig,
    ScannerConfig,
    ScreeningConfig,
    SenderAuthConfig,
    ShapingConfig,
    ShapingLimits,
    SieveConfig,
    SMTPConfig,
    SpamPolicy,
    SRSConfig,
    TLSConfig,
    TLSReportsConfig,
    UnixSocket,
    UserConfig,
    WebAccessConfig,
    WebConfig,
    WebFleetConfig,
    WebmailConfig,
    WebMetricsConfig,
    WebWellKnownConfig,
    field_default,
    workers_per_cpu,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Services that only the primary role offers: a listener for them on another role is a contradiction.
PRIMARY_SERVICES = ("submission", "submissions", "imap", "imaps", "pop3", "pop3s", "managesieve")


class ConfigError(Exception):
    """A configuration problem; str() is the one line shown to the administrator."""

    def __init__(self, where: str, reason: str, source: str = "") -> None:
        self.where = where
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {where}: {reason}" if source else f"{where}: {reason}")

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.where, self.reason, source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike[str], check_host: bool = True) -> Config:
    """Read, parse and validate a config file.

    `check_host` verifies that listen and source addresses exist on this host's interfaces; tests that build
    configs for other hosts turn it off.
    """
    return load_config_with_text(path, check_host)[0]


def load_config_with_text(path: str | os.PathLike[str], check_host: bool = True) -> tuple[Config, str]:
    """`load_config`, also returning the exact text validated (so other processes can use that very text)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file", "does not exist", source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("file", f"cannot be read ({exc.__class__.__name__}: {exc})", source) from None
    return parse_config(text, source=source, base_dir=Path(path).resolve().parent, check_host=check_host), text


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None,
                 check_host: bool = True) -> Config:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(where, f"invalid YAML: {problem}", source) from None
    try:
        config = _build(raw, source, base_dir or Path.cwd())
        if check_host:
            check_host_addresses(config)
        return config
    except ConfigError as exc:
        raise exc.with_source(source) from None


# ---------------------------------------------------------------------------------------------- primitives


def _mapping(value: Any, where: str, allowed: tuple[str, ...] | None = None) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"expected a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(where, f"key {key!r} must be a string")
        if allowed is not None and key not in allowed:
            parent = "" if where == "top level" else where
            raise ConfigError(_join(parent, key), f"unknown key (expected one of {', '.join(allowed)})")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(where, f"expected a list, got {_kind(value)}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"expected a non-empty string, got {_kind(value)}")
    return value.strip()


def _int(value: Any, where: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"expected an integer, got {_kind(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(where, f"must be {bound}, got {value}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"expected true or false, got {_kind(value)}")
    return value


def parse_duration(value: Any, where: str, allow_zero: bool = False) -> float:
    """'10m' -> 600.0. Bare numbers are refused: minutes and seconds are too easy to confuse."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
            if seconds < 0 or (seconds == 0 and not allow_zero):
                raise ConfigError(where, f"duration must be positive, got {value!r}")
            return seconds
    raise ConfigError(where, f"expected a duration such as '30s', '10m', '2h' or '5d', got {value!r}")


def _domain(value: Any, where: str) -> str:
    name = _str(value, where).lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(where, f"{value!r} is not a valid domain name")
    return name


def _hostname(value: Any, where: str) -> str:
    name = _str(value, where).rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ConfigError(where, f"{value!r} is not a valid host name")
    return name


def _address(value: Any, where: str) -> str:
    """A mailbox address local@domain; the domain is lower-cased, the local part kept."""
    text = _str(value, where)
    local, at, domain = text.rpartition("@")
    if not at or not local or any(c in local for c in " <>\"\\,;") or any(ord(c) < 33 for c in local):
        raise ConfigError(where, f"{value!r} is not a valid mail address (local@domain)")
    return f"{local}@{_domain(domain, where)}"


def _ip(value: Any, where: str) -> str:
    text = _str(value, where)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(where, f"{text!r} is not an IP address") from None


def _host_port(value: Any, where: str, default_port: int = 25, ip_only: bool = False) -> HostPort:
    """'host:port', 'host', '[v6]:port', 'v6' (a bare IPv6 literal takes the default port)."""
    text = _str(value if not isinstance(value, int) else str(value), where)
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            raise ConfigError(where, f"{text!r} is not host:port ('[IPv6]:port' for IPv6)")
        host, port_text = text[1:end], text[end + 2:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError(where, f"{text!r}: port must be a number from 1 to 65535")
        port = int(port_text)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if ip_only:
            raise ConfigError(where, f"{text!r}: listen address must be an IP address, not a name") from None
        host = _hostname(host, where)
    return HostPort(host, port)


def _network(value: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _str(value, where)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ConfigError(where, f"{text!r} has host bits set (did you mean "
                                     f"{ipaddress.ip_network(text, strict=False)}?)") from None
        raise ConfigError(where, f"{text!r} is not a CIDR network (such as 192.0.2.0/24 or 2001:db8::/32)") from None


def _retry_schedule(value: Any, where: str, default: tuple[float, ...]) -> tuple[float, ...]:
    if value is None:
        return default
    items = _list(value, where)
    if not items:
        raise ConfigError(where, "must list at least one interval")
    return tuple(parse_duration(item, f"{where}[{i}]") for i, item in enumerate(items))


_Parse = Callable[[Any, str], Any]


def _given(section: Mapping[str, Any], where: str, parsers: Mapping[str, _Parse]) -> dict[str, Any]:
    """The keys present in `section`, each validated by its parser (in the parsers' order).

    A key left out is absent from the result, so the dataclass built from it supplies the model's default.
    """
    return {key: parse(section[key], _join(where, key)) for key, parse in parsers.items() if key in section}


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(spec.name for spec in dataclasses.fields(cls))


def _join(where: str, key: str) -> str:
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {value!r}", bool: f"{value}"}.get(
        type(value), f"{type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------- sections

TOP_KEYS = ("hostname", "data_dir", "roles", "log_level", "listen", "tls", "dns", "smtp", "auth", "delivery", "queue",
            "filters", "limits", "bans", "screening", "greylisting", "sender_auth", "dkim", "srs", "shaping",
            "outbound_tls", "tls_reports", "sieve", "imap", "web", *ROLES)


def _build(raw: Any, source: str, base_dir: Path) -> Config:
    top = _mapping(raw, "top level", TOP_KEYS)
    if not top:
        raise ConfigError("top level", "the file is empty")
    if "hostname" not in top:
        raise ConfigError("hostname", "is required (the FQDN this host answers as)")
    if "roles" not in top:
        raise ConfigError("roles", f"is required (one or more of {', '.join(ROLES)})")
    roles = _roles(top["roles"])
    given = _given(top, "", {"data_dir": lambda v, w: _data_dir(v, w, base_dir), "log_level": _log_level})
    for role in ROLES:
        if role in top and role not in roles:
            raise ConfigError(role, f"section given but role {role!r} is not in roles")
    queue = _queue(top.get("queue"))
    config = Config(
        hostname=_hostname(top["hostname"], "hostname"),
        roles=roles,
        **given,
        listen=_listen(top.get("listen"), roles),
        tls=_tls(top.get("tls"), base_dir),
        dns=_dns(top.get("dns")),
        smtp=_smtp(top.get("smtp")),
        auth=_auth(top.get("auth")),
        imap=_imap(top.get("imap")),
        delivery=_delivery(top.get("delivery")),
        queue=queue,
        filters=_filters(top.get("filters"), base_dir),
        limits=_limits(top.get("limits")),
        bans=_bans(top.get("bans")),
        screening=_screening(top.get("screening")),
        greylisting=_greylisting(top.get("greylisting")),
        sender_auth=_sender_auth(top.get("sender_auth")),
        dkim=_dkim(top.get("dkim"), base_dir, queue),
        srs=_srs(top.get("srs")),
        sieve=_sieve(top.get("sieve"), base_dir),
        shaping=_shaping(top.get("shaping")),
        outbound_tls=_outbound_tls(top.get("outbound_tls"), base_dir),
        tls_reports=_tls_reports(top.get("tls_reports")),
        web=_web(top.get("web")),
        primary=_primary(top.get("primary")) if "primary" in roles else None,
        backup_mx=_backup_mx(top.get("backup_mx"), queue) if "backup_mx" in roles else None,
        incoming_gateway=(_incoming(top.get("incoming_gateway"), queue)
                          if "incoming_gateway" in roles else None),
        outgoing_gateway=(_outgoing(top.get("outgoing_gateway"), queue)
                          if "outgoing_gateway" in roles else None),
        source=source,
    )
    _check_domain_overlaps(config)
    _check_srs(config)
    return config


def _data_dir(value: Any, where: str, base_dir: Path) -> Path:
    path = Path(_str(value, where))
    return path if path.is_absolute() else base_dir / path


def _log_level(value: Any, where: str) -> str:
    level = _str(value, where).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(where, f"unknown level {level!r} (expected one of {', '.join(LOG_LEVELS)})")
    return level


def _roles(value: Any) -> tuple[str, ...]:
    items = _list(value, "roles")
    if not items:
        raise ConfigError("roles", f"must list at least one role ({', '.join(ROLES)})")
    roles: list[str] = []
    for i, item in enumerate(items):
        if item not in ROLES:
            raise ConfigError(f"roles[{i}]", f"unknown role {item!r} (expected one of {', '.join(ROLES)})")
        if item in roles:
            raise ConfigError(f"roles[{i}]", f"role {item!r} is listed twice")
        roles.append(item)
    return tuple(roles)


def _listen(value: Any, roles: tuple[str, ...]) -> ListenConfig:
    section = _mapping(value, "listen", tuple(ListenConfig.__dataclass_fields__))
    result: dict[str, tuple[HostPort, ...]] = {}
    seen: dict[HostPort, str] = {}
    for service, items in section.items():
        entries = []
        for i, item in enumerate(_list(items, f"listen.{service}")):
            where = f"listen.{service}[{i}]"
            hp = _host_port(item, where, default_port=0, ip_only=True)
            if hp.port == 0:
                raise ConfigError(where, f"{item!r}: a listen address needs a port (address:port)")
            if hp in seen:
                raise ConfigError(where, f"{hp} is already used by {seen[hp]}")
            seen[hp] = where
            entries.append(hp)
        if entries and service in PRIMARY_SERVICES and "primary" not in roles:
            raise ConfigError(f"listen.{service}", "only the primary role serves this; add primary to roles "
                                                   "or remove the listener")
        result[service] = tuple(entries)
    return ListenConfig(**result)


def _tls(value: Any, base_dir: Path) -> TLSConfig:
    section = _mapping(value, "tls", _keys(TLSConfig))
    paths: dict[str, Path | None] = {}
    for key in ("cert", "key"):
        raw = section.get(key)
        if raw is None:
            paths[key] = None
            continue
        path = Path(_str(raw, f"tls.{key}"))
        path = path if path.is_absolute() else base_dir / path
        if not os.access(path, os.R_OK) or not path.is_file():
            raise ConfigError(f"tls.{key}", f"{path} is not a readable file")
        paths[key] = path
    if (paths["cert"] is None) != (paths["key"] is None):
        raise ConfigError("tls", "cert and key go together: give both, or neither for a self-signed certificate")
    if paths["cert"] is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(paths["cert"], paths["key"])
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError("tls", f"cannot load certificate {paths['cert']} with key {paths['key']}: "
                                     f"{getattr(exc, 'reason', None) or exc}") from None
    return TLSConfig(cert=paths["cert"], key=paths["key"],
                     **_given(section, "tls", {"plaintext_auth_on_loopback": _bool}))


def _ips(value: Any, where: str) -> tuple[str, ...]:
    return tuple(_ip(item, f"{where}[{i}]") for i, item in enumerate(_list(value, where)))


def _dns(value: Any) -> DNSConfig:
    section = _mapping(value, "dns", _keys(DNSConfig))
    return DNSConfig(**_given(section, "dns", {
        "nameservers": _ips,
        "port": lambda v, w: _int(v, w, 1, 65535),
        "timeout": parse_duration,
    }))


def _smtp(value: Any) -> SMTPConfig:
    section = _mapping(value, "smtp", _keys(SMTPConfig))
    return SMTPConfig(**_given(section, "smtp", {
        "max_message_size": lambda v, w: _int(v, w, 1024),
        "max_recipients": lambda v, w: _int(v, w, 1),
        "max_sessions": lambda v, w: _int(v, w, 1),
        "idle_timeout": parse_duration,
        "workers": _workers,
    }))


def _workers(value: Any, where: str) -> int:
    """'auto' (the default): one acceptor process per CPU when there are several CPUs, else one process."""
    if value == "auto":
        return workers_per_cpu()
    return _int(value, where, 0, 64)


def _auth(value: Any) -> AuthConfig:
    section = _mapping(value, "auth", _keys(AuthConfig))
    return AuthConfig(**_given(section, "auth", {
        "ban_threshold": lambda v, w: _int(v, w, 1),
        "ban_window": parse_duration,
        "ban_duration": parse_duration,
        "exempt_loopback": _bool,
        "login_cache": _login_cache,
        "password_workers": lambda v, w: _int(v, w, 1, 64),
    }))


def _login_cache(value: Any, where: str) -> LoginCacheConfig:
    section = _mapping(value, where, _keys(LoginCacheConfig))
    return LoginCacheConfig(**_given(section, where, {
        "enabled": _bool,
        "ttl": _ttl,
        "max_entries": lambda v, w: _int(v, w, 1, 10_000_000),
    }))


def _ttl(value: Any, where: str) -> float:
    """A duration ('5m'), or a whole number of seconds as the key's name promises (0: no caching)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(_int(value, where, 0, 86400))
    seconds = parse_duration(value, where, allow_zero=True)
    if seconds > 86400:
        raise ConfigError(where, f"must be at most 1d, got {value!r}")
    return seconds


def _imap(value: Any) -> ImapConfig:
    section = _mapping(value, "imap", _keys(ImapConfig))
    return ImapConfig(**_given(section, "imap", {
        "full_text_search": _bool,
        "fts_max_bytes": lambda v, w: _int(v, w, 4096, 1 << 30),
        "fts_autoindex": _bool,
    }))


def _delivery(value: Any) -> DeliveryConfig:
    section = _mapping(value, "delivery", _keys(DeliveryConfig))
    return DeliveryConfig(**_given(section, "delivery", {
        "smarthost": lambda v, w: _host_port(v, w) if v is not None else None,
        "source_addresses": _ips,
        "concurrency_per_destination": lambda v, w: _int(v, w, 1, 1000),
        "connect_timeout": parse_duration,
        "command_timeout": parse_duration,
        "connection_reuse_time": lambda v, w: parse_duration(v, w, allow_zero=True),
    }))


def _queue(value: Any) -> QueueConfig:
    section = _mapping(value, "queue", _keys(QueueConfig))
    return QueueConfig(**_given(section, "queue", {
        "retry_schedule": lambda v, w: _retry_schedule(v, w, field_default(QueueConfig, "retry_schedule")),
        "lifetime": parse_duration,
    }))


def _filters(value: Any, base_dir: Path) -> FiltersConfig:
    section = _mapping(value, "filters", _keys(FiltersConfig))
    scanners: list[ScannerConfig] = []
    names: set[str] = set()
    for i, item in enumerate(_list(section.get("scanners"), "filters.scanners")):
        scanner = _scanner(item, f"filters.scanners[{i}]", base_dir)
        if scanner.name in names:
            raise ConfigError(f"filters.scanners[{i}].name", f"{scanner.name!r} is used by an earlier scanner; "
                                                             "give each a name of its own")
        names.add(scanner.name)
        scanners.append(scanner)
    spam = _spam_policy(section.get("spam"), "filters.spam", SpamPolicy())
    domains = {}
    for key, entry in _mapping(section.get("domains"), "filters.domains").items():
        where = _join("filters.domains", key)
        domain = _domain(key, where)
        if domain in domains:
            raise ConfigError(where, f"{domain} is listed twice")
        domains[domain] = _spam_policy(entry, where, spam)
    return FiltersConfig(scanners=tuple(scanners), spam=spam, domains=domains, **_given(section, "filters", {
        "virus_action": lambda v, w: _choice(v, w, VIRUS_ACTIONS),
        "scan_authenticated": _bool,
        "breaker_failures": lambda v, w: _int(v, w, 1),
        "breaker_pause": parse_duration,
        "trusted_gateways": lambda v, w: tuple(_network(item, f"{w}[{i}]") for i, item in enumerate(_list(v, w))),
    }))


def _scanner(value: Any, where: str, base_dir: Path) -> ScannerConfig:
    entry = _mapping(value, where, _keys(ScannerConfig))
    if "type" not in entry:
        raise ConfigError(f"{where}.type", f"is required (one of {', '.join(SCANNER_TYPES)})")
    kind = _choice(entry["type"], f"{where}.type", SCANNER_TYPES)
    if "address" not in entry:
        raise ConfigError(f"{where}.address", "is required (host:port, or unix:/path for a Unix socket)")
    address = _scanner_address(entry["address"], f"{where}.address", base_dir)
    given = _given(entry, where, {
        "name": _str,
        "timeout": parse_duration,
        "max_scan_size": _int,
        "on_error": lambda v, w: _choice(v, w, ON_ERROR),
        "settings_id": _header_token,
        "user": _header_token,
    })
    for key, only in (("settings_id", "rspamd"), ("user", "spamassassin")):
        if key in given and kind != only:
            raise ConfigError(f"{where}.{key}", f"applies to {only} only, not {kind}")
    given.setdefault("name", kind)
    given.setdefault("max_scan_size", DEFAULT_MAX_SCAN_SIZE[kind])
    return ScannerConfig(type=kind, address=address, **given)


def _header_token(value: Any, where: str) -> str:
    """A value sent to a scanner in a request header (spamd's User:, rspamd's Settings-ID): printable ASCII
    without spaces or colons, so that it cannot add a header of its own."""
    text = _str(value, where)
    if not all(33 <= ord(c) < 127 and c != ":" for c in text):
        raise ConfigError(where, f"{text!r}: use printable ASCII without spaces or colons")
    return text


def _scanner_address(value: Any, where: str, base_dir: Path) -> HostPort | UnixSocket:
    """'host:port', '[v6]:port', 'unix:/path'; as Postfix writes milters, also 'inet:host:port'."""
    text = _str(value, where)
    if text.startswith("unix:"):
        path = Path(text[5:])
        if not text[5:]:
            raise ConfigError(where, f"{text!r}: give the socket's path after unix:")
        return UnixSocket(path if path.is_absolute() else base_dir / path)
    if text.startswith("inet:"):
        text = text[5:]
    hp = _host_port(text, where, default_port=0)
    if hp.port == 0:
        raise ConfigError(where, f"{value!r}: a scanner address needs a port (host:port) or unix:/path")
    return hp


def _spam_policy(value: Any, where: str, base: SpamPolicy) -> SpamPolicy:
    """Thresholds; a key left out takes `base`'s value (the global policy, for a domain's entry)."""
    section = _mapping(value, where, _keys(SpamPolicy))

    def score(v: Any, w: str) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(w, f"expected a score (a number) or null to turn this action off, got {_kind(v)}")
        return float(v)

    policy = dataclasses.replace(base, **_given(section, where, {
        "add_header": score, "quarantine": score, "reject": score}))
    levels = [(key, getattr(policy, key)) for key in ("add_header", "quarantine", "reject")
              if getattr(policy, key) is not None]
    for (low, low_score), (high, high_score) in zip(levels, levels[1:], strict=False):
        if low_score > high_score:
            raise ConfigError(where, f"{low} ({low_score}) is above {high} ({high_score}): the thresholds rise "
                                     "from add_header to quarantine to reject")
    return policy


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    text = _str(value, where)
    if text not in choices:
        raise ConfigError(where, f"unknown value {text!r} (expected one of {', '.join(choices)})")
    return text


def _limits(value: Any) -> LimitsConfig:
    section = _mapping(value, "limits", _keys(LimitsConfig))
    return LimitsConfig(**_given(section, "limits", {
        "exempt": lambda v, w: tuple(_network(item, f"{w}[{i}]") for i, item in enumerate(_list(v, w))),
        "rate_window": parse_duration,
        "ipv4_prefix": lambda v, w: _int(v, w, 8, 32),
        "ipv6_prefix": lambda v, w: _int(v, w, 16, 128),
        "client": lambda v, w: _limit_set(v, w, "client"),
        "network": lambda v, w: _limit_set(v, w, "network"),
        "relay": lambda v, w: _limit_set(v, w, "relay"),
        "authenticated": lambda v, w: _limit_set(v, w, "authenticated"),
        "mailbox_sessions": _int,
    }))


# An authenticated user is known only after AUTH: its sessions, connections and AUTH commands were counted
# against its address before.
_AFTER_LOGIN = ("message_rate", "recipient_rate")


def _limit_set(value: Any, where: str, name: str) -> LimitSet:
    """A set of limits; the keys it leaves out keep that set's defaults (not zero)."""
    keys = _AFTER_LOGIN if name == "authenticated" else _keys(LimitSet)
    section = _mapping(value, where, keys)
    given = _given(section, where, {key: lambda v, w: _int(v, w, 0) for key in keys})
    return dataclasses.replace(field_default(LimitsConfig, name), **given)


def _bans(value: Any) -> BansConfig:
    section = _mapping(value, "bans", _keys(BansConfig))

    def factor(v: Any, w: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 1:
            raise ConfigError(w, f"expected a factor of at least 1 (1: bans do not grow), got {_kind(v)}")
        return float(v)

    return BansConfig(**_given(section, "bans", {
        "escalation": factor,
        "max_duration": parse_duration,
        "memory": parse_duration,
        "exempt": lambda v, w: tuple(_network(item, f"{w}[{i}]") for i, item in enumerate(_list(v, w))),
        "dictionary": _dictionary,
    }))


def _dictionary(value: Any, where: str) -> DictionaryConfig:
    section = _mapping(value, where, _keys(DictionaryConfig))
    config = DictionaryConfig(**_given(section, where, {
        "enabled": _bool,
        "session_threshold": lambda v, w: _int(v, w, 1),
        "ip_threshold": lambda v, w: _int(v, w, 1),
        "ban_after": lambda v, w: _int(v, w, 1),
        "window": parse_duration,
        "tarpit_delay": lambda v, w: parse_duration(v, w, allow_zero=True),
        "tarpit_max": lambda v, w: parse_duration(v, w, allow_zero=True),
        "ban_duration": parse_duration,
    }))
    if config.tarpit_max < config.tarpit_delay:
        raise ConfigError(f"{where}.tarpit_max", f"must be at least tarpit_delay ({config.tarpit_delay:g}s), "
                                                 f"got {config.tarpit_max:g}s")
    if config.tarpit_max > 240:
        raise ConfigError(f"{where}.tarpit_max", "must be at most 4m: a client waits 5 minutes for a RCPT reply "
                                                 "(RFC 5321 §4.5.3.2) and would give up before the ban")
    return config


def _screening(value: Any) -> ScreeningConfig:
    section = _mapping(value, "screening", _keys(ScreeningConfig))
    return ScreeningConfig(**_given(section, "screening", {"pregreet": _pregreet, "dnsbl": _dnsbl}))


def _pregreet(value: Any, where: str) -> PregreetConfig:
    section = _mapping(value, where, _keys(PregreetConfig))
    return PregreetConfig(**_given(section, where, {
        "enabled": _bool,
        "wait": parse_duration,
        "ttl": lambda v, w: parse_duration(v, w, allow_zero=True),
    }))


def _dnsbl(value: Any, where: str) -> DNSBLConfig:
    section = _mapping(value, where, _keys(DNSBLConfig))
    config = DNSBLConfig(**_given(section, where, {
        "sites": lambda v, w: tuple(_dnsbl_site(item, f"{w}[{i}]") for i, item in enumerate(_list(v, w))),
        "threshold": _number,
        "allow_threshold": _number,
        "timeout": parse_duration,
        "ttl": lambda v, w: parse_duration(v, w, allow_zero=True),
    }))
    # A client listed nowhere scores 0: it must be neither refused nor allow-listed.
    if config.threshold <= 0:
        raise ConfigError(f"{where}.threshold", f"must be above 0 (a client listed nowhere scores 0), "
                                                f"got {config.threshold:g}")
    if config.allow_threshold >= 0:
        raise ConfigError(f"{where}.allow_threshold", f"must be below 0 (a client listed nowhere scores 0), "
                                                      f"got {config.allow_threshold:g}")
    return config


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(where, f"expected a number, got {_kind(value)}")
    return float(value)


def _dnsbl_site(value: Any, where: str) -> DNSBLSite:
    section = _mapping(value, where, _keys(DNSBLSite))
    if "zone" not in section:
        raise ConfigError(f"{where}.zone", "required: the DNS zone to ask, such as zen.spamhaus.org")

    def weight(v: Any, w: str) -> float:
        number = _number(v, w)
        if number == 0:
            raise ConfigError(w, "must not be 0 (a zone that counts nothing); negative makes it an allow list")
        return number

    return DNSBLSite(**_given(section, where, {
        "zone": _domain,
        "weight": weight,
        "codes": _codes,
    }))


def _codes(value: Any, where: str) -> tuple[CodeRange, ...]:
    """A site's return codes (config/dnsbl_codes.py has the syntax), each item becoming one or more ranges."""
    ranges: list[CodeRange] = []
    for i, item in enumerate(_list(value, where)):
        text = _str(item, f"{where}[{i}]")
        try:
            ranges += parse_codes(text)
        except ValueError as exc:
            raise ConfigError(f"{where}[{i}]", f"{text!r}: {exc}") from None
    return tuple(ranges)


def _greylisting(value: Any) -> GreylistConfig:
    section = _mapping(value, "greylisting", _keys(GreylistConfig))
    config = GreylistConfig(**_given(section, "greylisting", {
        "enabled": _bool,
        "delay": parse_duration,
        "retry_window": parse_duration,
        "lifetime": parse_duration,
        "auto_allow": lambda v, w: _int(v, w, 0),
        "auto_allow_interval": lambda v, w: parse_duration(v, w, allow_zero=True),
        "exempt": lambda v, w: tuple(_network(item, f"{w}[{i}]") for i, item in enumerate(_list(v, w))),
        "exempt_recipients": _greylist_recipients,
    }))
    if config.retry_window <= config.delay:
        raise ConfigError("greylisting.retry_window", f"must be longer than delay ({config.delay:g}s): a retry "
                                                      "could never come late enough to pass")
    return config


def _greylist_recipients(value: Any, where: str) -> frozenset[str]:
    """Domains (example.org) and addresses (postmaster@example.org), lower-cased."""
    found = set()
    for i, item in enumerate(_list(value, where)):
        text = _str(item, f"{where}[{i}]")
        found.add((_address(text, f"{where}[{i}]") if "@" in text else _domain(text, f"{where}[{i}]")).lower())
    return frozenset(found)


def _sender_auth(value: Any) -> SenderAuthConfig:
    section = _mapping(value, "sender_auth", _keys(SenderAuthConfig))
    given = _given(section, "sender_auth", {
        **{key: _bool for key in ("enabled", "spf", "dkim", "dmarc", "arc", "refuse_local_senders")},
        "authserv_id": lambda v, w: None if v is None else _hostname(v, w),
        **_dmarc_actions_parsers(),
    })
    base = DmarcActions(given.get("dmarc_reject", DmarcActions.dmarc_reject),
                        given.get("dmarc_quarantine", DmarcActions.dmarc_quarantine))
    domains: dict[str, DmarcActions] = {}
    for key, entry in _mapping(section.get("domains"), "sender_auth.domains").items():
        where = _join("sender_auth.domains", key)
        domain = _domain(key, where)
        if domain in domains:
            raise ConfigError(where, f"{domain} is listed twice")
        actions = _mapping(entry, where, _keys(DmarcActions))
        domains[domain] = dataclasses.replace(base, **_given(actions, where, _dmarc_actions_parsers()))
    return SenderAuthConfig(domains=domains, **given)


def _dmarc_actions_parsers() -> dict[str, _Parse]:
    return {key: lambda v, w: _choice(v, w, DMARC_ACTIONS) for key in ("dmarc_reject", "dmarc_quarantine")}


def _primary(value: Any) -> PrimaryConfig:
    if value is None:
        raise ConfigError("primary", "is required when roles has primary (at least primary.domains)")
    section = _mapping(value, "primary", _keys(PrimaryConfig))
    domains = _domain_list(section.get("domains"), "primary.domains")
    users: list[UserConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(section.get("users"), "primary.users")):
        where = f"primary.users[{i}]"
        entry = _mapping(item, where, _keys(UserConfig))
        if "address" not in entry:
            raise ConfigError(f"{where}.address", "is required")
        address = _local_address(entry["address"], f"{where}.address", domains)
        if address.lower() in seen:
            raise ConfigError(f"{where}.address", f"user {address} is listed twice")
        seen.add(address.lower())
        users.append(UserConfig(address, **_given(entry, where, {"password_hash": _password_hash, "quota": _int})))
    aliases: dict[str, tuple[str, ...]] = {}
    for key, targets in _mapping(section.get("aliases"), "primary.aliases").items():
        where = _join("primary.aliases", key)
        alias = _local_address(key, where, domains)
        if alias.lower() in seen:
            raise ConfigError(where, f"{alias} is both a user and an alias")
        items = [targets] if isinstance(targets, str) else _list(targets, where)
        if not items:
            raise ConfigError(where, "an alias needs at least one target address")
        aliases[alias] = tuple(_address(t, f"{where}[{i}]") for i, t in enumerate(items))
    catch_all: dict[str, str] = {}
    for key, target in _mapping(section.get("catch_all"), "primary.catch_all").items():
        where = _join("primary.catch_all", key)
        domain = _domain(key, where)
        if domain not in domains:
            raise ConfigError(where, f"{domain} is not one of primary.domains")
        catch_all[domain] = _address(target, where)
    return PrimaryConfig(domains=tuple(domains), users=tuple(users), aliases=aliases, catch_all=catch_all)


def _password_hash(value: Any, where: str) -> str | None:
    if value is None:
        return None
    password_hash = _str(value, where)
    if not password_hash.startswith("$argon2"):
        raise ConfigError(where, "must be an argon2 hash ($argon2id$...), never a clear-text password (make one: "
                                 "mailfleet hash-password)")
    return password_hash


def _local_address(value: Any, where: str, domains: list[str]) -> str:
    address = _address(value, where)
    if address.rpartition("@")[2] not in domains:
        raise ConfigError(where, f"{address} is not in one of primary.domains ({', '.join(domains)})")
    return address


def _domain_list(value: Any, where: str) -> list[str]:
    items = _list(value, where)
    if not items:
        raise ConfigError(where, "must list at least one domain")
    domains: list[str] = []
    for i, item in enumerate(items):
        domain = _domain(item, f"{where}[{i}]")
        if domain in domains:
            raise ConfigError(f"{where}[{i}]", f"{domain} is listed twice")
        domains.append(domain)
    return domains


def _domain_table(value: Any, where: str, build: Callable[[Mapping[str, Any], str, str], Any]) -> dict:
    table = _mapping(value, where)
    if not table:
        raise ConfigError(where, "must list at least one domain")
    result = {}
    for key, entry in table.items():
        entry_where = _join(where, key)
        domain = _domain(key, entry_where)
        if domain in result:
            raise ConfigError(entry_where, f"{domain} is listed twice")
        result[domain] = build(entry, entry_where, domain)
    return result


def _hosts(value: Any, where: str) -> tuple[HostPort, ...]:
    items = _list(value, where)
    if not items:
        raise ConfigError(where, "must list at least one host (host or host:port)")
    return tuple(_host_port(item, f"{where}[{i}]") for i, item in enumerate(items))


def _backup_mx(value: Any, queue: QueueConfig) -> BackupMXConfig:
    if value is None:
        raise ConfigError("backup_mx", "is required when roles has backup_mx (backup_mx.domains)")
    section = _mapping(value, "backup_mx", _keys(BackupMXConfig))

    def build(entry: Any, where: str, domain: str) -> BackupDomain:
        entry = _mapping(entry, where, _keys(BackupDomain))
        return BackupDomain(primary_hosts=_hosts(entry.get("primary_hosts"), f"{where}.primary_hosts"),
                            **_verification(entry, where, domain))

    return BackupMXConfig(
        domains=_domain_table(section.get("domains"), "backup_mx.domains", build),
        retry_schedule=_retry_schedule(section.get("retry_schedule"), "backup_mx.retry_schedule",
                                       queue.retry_schedule),
        **_given(section, "backup_mx", {"callout": _callout}),
    )


def _incoming(value: Any, queue: QueueConfig) -> IncomingGatewayConfig:
    if value is None:
        raise ConfigError("incoming_gateway", "is required when roles has incoming_gateway "
                                              "(incoming_gateway.domains)")
    section = _mapping(value, "incoming_gateway", _keys(IncomingGatewayConfig))

    def build(entry: Any, where: str, domain: str) -> ForwardDomain:
        entry = _mapping(entry, where, _keys(ForwardDomain))
        return ForwardDomain(destinations=_hosts(entry.get("destinations"), f"{where}.destinations"),
                             **_verification(entry, where, domain))

    return IncomingGatewayConfig(
        domains=_domain_table(section.get("domains"), "incoming_gateway.domains", build),
        retry_schedule=_retry_schedule(section.get("retry_schedule"), "incoming_gateway.retry_schedule",
                                       queue.retry_schedule),
        **_given(section, "incoming_gateway", {"callout": _callout}),
    )


def _verification(entry: Mapping[str, Any], where: str, domain: str) -> dict[str, Any]:
    """`recipients` and `verify` of a backed-up or forwarded domain. Left out, verify is list when recipients are
    given and callout when not, so that no domain accepts every address unless `verify: none` says so."""
    recipients: list[str] = []
    for i, item in enumerate(_list(entry.get("recipients"), f"{where}.recipients")):
        item_where = f"{where}.recipients[{i}]"
        text = _str(item, item_where)
        # "@domain": every address of the domain (the primary has a catch-all), as in Postfix's
        # relay_recipient_maps.
        address = f"@{_domain(text[1:], item_where)}" if text.startswith("@") else _address(text, item_where)
        if address.rpartition("@")[2] != domain:
            raise ConfigError(item_where, f"{address} is not in {domain}")
        recipients.append(address.lower())
    verify = _choice(entry["verify"], f"{where}.verify", VERIFY_MODES) if "verify" in entry else (
        "list" if recipients else "callout")
    if verify == "list" and not recipients:
        raise ConfigError(f"{where}.recipients", "verify is list but no recipient is listed: every address would "
                                                 "be refused (list them, or use verify: callout or none)")
    if verify != "list" and recipients:
        raise ConfigError(f"{where}.verify", f"is {verify}, so the recipients listed would not be used "
                                             "(verify: list, or drop the list)")
    return {"recipients": frozenset(recipients), "verify": verify}


def _callout(value: Any, where: str) -> CalloutConfig:
    section = _mapping(value, where, _keys(CalloutConfig))
    return CalloutConfig(**_given(section, where, {
        "timeout": parse_duration,
        "positive_ttl": parse_duration,
        "negative_ttl": parse_duration,
        "unreachable": lambda v, w: _choice(v, w, CALLOUT_UNREACHABLE),
    }))


def _outgoing(value: Any, queue: QueueConfig) -> OutgoingGatewayConfig:
    section = _mapping(value, "outgoing_gateway", _keys(OutgoingGatewayConfig))
    return OutgoingGatewayConfig(
        **_given(section, "outgoing_gateway", {
            "relay_networks": lambda v, w: tuple(_network(item, f"{w}[{i}]") for i, item in enumerate(_list(v, w))),
            "egress": _egress,
            "failover": _failover,
        }),
        retry_schedule=_retry_schedule(section.get("retry_schedule"), "outgoing_gateway.retry_schedule",
                                       queue.retry_schedule),
    )


# ---------------------------------------------------------------------------------------------- egress pool

def _egress(value: Any, where: str) -> tuple[EgressAddress, ...]:
    pool = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        entry = _mapping(item, at, _keys(EgressAddress))
        if "address" not in entry:
            raise ConfigError(at, "needs an address")
        pool.append(EgressAddress(address=_ip(entry["address"], _join(at, "address")),
                                  **_given(entry, at, {"helo": _hostname})))
    return tuple(pool)


def _failover(value: Any, where: str) -> EgressFailoverConfig:
    section = _mapping(value, where, _keys(EgressFailoverConfig))
    return EgressFailoverConfig(**_given(section, where, {
        "dnsbl": lambda v, w: tuple(_domain(z, f"{w}[{i}]") for i, z in enumerate(_list(v, w))),
        "check_interval": parse_duration,
        "clear_for": parse_duration,
        "rejection_threshold": lambda v, w: _int(v, w, minimum=1),
        "rejection_window": parse_duration,
        "rejection_texts": _rejection_texts,
        "max_changes_per_day": _int,
    }))


def _rejection_texts(value: Any, where: str) -> tuple[str, ...]:
    """Regular expressions, each checked here so that a broken one is refused with its key, not at a reply."""
    texts = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        text = _str(item, at)
        try:
            re.compile(text, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(at, f"{text!r} is not a valid regular expression ({exc})") from None
        texts.append(text)
    return tuple(texts)


# ---------------------------------------------------------------------------------------------- DKIM and ARC

def _dkim(value: Any, base_dir: Path, queue: QueueConfig) -> DKIMConfig:
    section = _mapping(value, "dkim", _keys(DKIMConfig))
    config = DKIMConfig(**_given(section, "dkim", {
        "enabled": _bool,
        "keys_dir": lambda v, w: None if v is None else base_dir / _str(v, w),
        "retire_after": parse_duration,
        "check_interval": parse_duration,
        "publish": lambda v, w: None if v is None else _dkim_publish(v, w),
        "arc_seal": _bool,
        "arc_domain": lambda v, w: None if v is None else _domain(v, w),
        "headers": _signed_headers,
    }))
    # A message signed at intake may wait queue.lifetime before its last attempt: its selector must stay in DNS.
    if config.retire_after < queue.lifetime:
        raise ConfigError("dkim.retire_after", f"{_days(config.retire_after)} is shorter than queue.lifetime "
                                               f"({_days(queue.lifetime)}): a queued message's signature would "
                                               "stop verifying")
    return config


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h"


TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")


def _dkim_publish(value: Any, where: str) -> DKIMPublishConfig:
    section = _mapping(value, where, _keys(DKIMPublishConfig))
    for key in ("server", "key_name", "key_secret"):
        if key not in section:
            raise ConfigError(_join(where, key), "is required for RFC 2136 updates")
    return DKIMPublishConfig(**_given(section, where, {
        "server": _hostname,
        "key_name": _hostname,
        "key_secret": _tsig_secret,
        "port": lambda v, w: _int(v, w, 1, 65535),
        "zone": lambda v, w: None if v is None else _domain(v, w),
        "key_algorithm": lambda v, w: _choice(v, w, TSIG_ALGORITHMS),
    }))


def _tsig_secret(value: Any, where: str) -> str:
    text = _str(value, where)
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError(where, "is not base64 (the secret of the TSIG key, as tsig-keygen prints it)") from None
    return text


def _signed_headers(value: Any, where: str) -> tuple[str, ...]:
    """dkim.headers: field names (RFC 5322 §3.6.8 ftext), lower-cased, each once; From among them."""
    names = []
    for i, item in enumerate(_list(value, where)):
        name = _str(item, f"{where}[{i}]").strip().lower()
        if not name or any(not (33 <= ord(c) <= 126) or c == ":" for c in name):
            raise ConfigError(f"{where}[{i}]", f"{item!r} is not a header field name")
        if name in ("dkim-signature", "received", "return-path"):
            raise ConfigError(f"{where}[{i}]", f"{name} must not be signed (RFC 6376 §5.4)")
        if name not in names:
            names.append(name)
    if "from" not in names:
        raise ConfigError(where, "must include from (RFC 6376 §5.4: From is always signed)")
    return tuple(names)


# ---------------------------------------------------------------------------------------------- SRS

def _srs(value: Any) -> SRSConfig:
    section = _mapping(value, "srs", _keys(SRSConfig))
    return SRSConfig(**_given(section, "srs", {
        "enabled": _bool,
        "domain": lambda v, w: None if v is None else _domain(v, w),
        "secrets": lambda v, w: tuple(_str(x, f"{w}[{i}]") for i, x in enumerate(_list(v, w))),
        "max_age": parse_duration,
    }))


# ---------------------------------------------------------------------------------------------- Sieve

def _sieve(value: Any, base_dir: Path) -> SieveConfig:
    """The sieve section; whether a global script parses is checked where the parser lives (sieve.engine),
    when the service starts and by check-config."""
    section = _mapping(value, "sieve", _keys(SieveConfig))

    def script(v: Any, where: str) -> Path | None:
        if v is None:
            return None
        path = Path(_str(v, where))
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(where, f"{path}: no such file")
        return path

    config = SieveConfig(**_given(section, "sieve", {
        "enabled": _bool,
        "global_before": script,
        "global_after": script,
        "max_script_size": lambda v, w: _int(v, w, 1),
        "max_scripts": lambda v, w: _int(v, w, 1),
        "max_redirects": lambda v, w: _int(v, w, 0),
        "vacation_min_days": lambda v, w: _int(v, w, 1),
        "vacation_max_days": lambda v, w: _int(v, w, 1),
    }))
    if config.vacation_min_days > config.vacation_max_days:
        raise ConfigError("sieve.vacation_min_days", f"is {config.vacation_min_days}, above "
                                                     f"vacation_max_days ({config.vacation_max_days})")
    return config


SRS_SECRET_MIN = 16  # characters: an attacker who collects our SRS addresses can test secrets offline


def _check_srs(config: Config) -> None:
    """SRS on: a secret long enough to resist an offline search (a found secret forges bounces at will), and a
    domain this host receives mail for (the bounces to it must reach the reversal)."""
    srs = config.srs
    if not srs.enabled:
        return
    if not srs.secrets:
        raise ConfigError("srs.secrets", "enabled needs at least one secret (the first signs, every one verifies)")
    for i, secret in enumerate(srs.secrets):
        if len(secret) < SRS_SECRET_MIN:
            raise ConfigError(f"srs.secrets[{i}]", f"is {len(secret)} characters; at least {SRS_SECRET_MIN} are "
                                                   "needed, a short one can be found from the addresses it signed")
    domain = config.srs_domain
    if domain is None:
        raise ConfigError("srs.domain", "is required on a host without the primary role (the domain the "
                                        "primary rewrites senders into)")
    if domain not in config.local_domains and domain not in config.backup_domains \
            and domain not in config.forward_domains:
        raise ConfigError("srs.domain", f"{domain} is not a domain this host receives mail for (primary, "
                                        "backup_mx or incoming_gateway domains): its bounces would not come back")


# ---------------------------------------------------------------------------------------------- shaping

def _shaping(value: Any) -> ShapingConfig:
    section = _mapping(value, "shaping", _keys(ShapingConfig))
    config = ShapingConfig(**_given(section, "shaping", {
        "enabled": _bool,
        "default": _shaping_limits,
        "destinations": _shaping_destinations,
        "backoff": parse_duration,
        "backoff_max": parse_duration,
        "throttle_texts": lambda v, w: tuple(_regex(x, f"{w}[{i}]") for i, x in enumerate(_list(v, w))),
        "max_wait": lambda v, w: parse_duration(v, w, allow_zero=True),
    }))
    if config.backoff_max < config.backoff:
        raise ConfigError("shaping.backoff_max", f"must be at least backoff ({config.backoff:g}s), "
                                                 f"got {config.backoff_max:g}s")
    return config


def _shaping_limits(value: Any, where: str) -> ShapingLimits:
    section = _mapping(value, where, _keys(ShapingLimits))
    return ShapingLimits(**_given(section, where, {key: _int for key in _keys(ShapingLimits)}))


def _shaping_destinations(value: Any, where: str) -> dict[str, ShapingLimits]:
    destinations: dict[str, ShapingLimits] = {}
    for key, entry in _mapping(value, where).items():
        entry_where = _join(where, key)
        domain = _domain(key, entry_where)
        if domain in destinations:
            raise ConfigError(entry_where, f"{domain} is listed twice")
        destinations[domain] = _shaping_limits(entry, entry_where)
    return destinations


def _regex(value: Any, where: str) -> str:
    text = _str(value, where)
    try:
        re.compile(text)
    except re.error as exc:
        raise ConfigError(where, f"{text!r} is not a regular expression: {exc}") from None
    return text


# ---------------------------------------------------------------------------------------------- MTA-STS, DANE

def _outbound_tls(value: Any, base_dir: Path) -> OutboundTLSConfig:
    section = _mapping(value, "outbound_tls", _keys(OutboundTLSConfig))
    config = OutboundTLSConfig(**_given(section, "outbound_tls", {
        "mta_sts": _bool,
        "dane": _bool,
        "resolver": lambda v, w: tuple(_host_port(x, f"{w}[{i}]", 53, ip_only=True)
                                       for i, x in enumerate(_list(v, w))),
        "ca_file": lambda v, w: None if v is None else base_dir / _str(v, w),
        "fetch_timeout": parse_duration,
    }))
    if config.dane and not config.resolver:
        # RFC 7672 §2.1: DANE is only as good as the DNSSEC validation of its TLSA records.
        raise ConfigError("outbound_tls.resolver", "dane: true needs a DNSSEC-validating resolver (ip[:port])")
    return config


# ---------------------------------------------------------------------------------------------- TLS-RPT

def _tls_reports(value: Any) -> TLSReportsConfig:
    section = _mapping(value, "tls_reports", _keys(TLSReportsConfig))
    return TLSReportsConfig(**_given(section, "tls_reports", {
        "enabled": _bool,
        "organization": lambda v, w: None if v is None else _str(v, w),
        "contact": lambda v, w: None if v is None else _str(v, w),
        "from_address": lambda v, w: None if v is None else _address(v, w),
        "send_delay": parse_duration,
        "https_timeout": parse_duration,
        "keep": parse_duration,
    }))


# ---------------------------------------------------------------------------------------------- web


def _web(value: Any) -> WebConfig:
    section = _mapping(value, "web", _keys(WebConfig))
    return WebConfig(**_given(section, "web", {
        "access": _web_access,
        "fleet": _web_fleet,
        "metrics": _web_metrics,
        "wellknown": _web_wellknown,
        "webmail": _webmail,
    }))


def _web_access(value: Any, where: str) -> WebAccessConfig:
    section = _mapping(value, where, _keys(WebAccessConfig))
    return WebAccessConfig(**_given(section, where, {
        "session_lifetime": parse_duration,
        "idle_timeout": parse_duration,
    }))


def _web_fleet(value: Any, where: str) -> WebFleetConfig:
    section = _mapping(value, where, _keys(WebFleetConfig))
    return WebFleetConfig(**_given(section, where, {}))


def _web_metrics(value: Any, where: str) -> WebMetricsConfig:
    section = _mapping(value, where, _keys(WebMetricsConfig))
    return WebMetricsConfig(**_given(section, where, {}))


def _web_wellknown(value: Any, where: str) -> WebWellKnownConfig:
    section = _mapping(value, where, _keys(WebWellKnownConfig))
    return WebWellKnownConfig(**_given(section, where, {}))


def _webmail(value: Any, where: str) -> WebmailConfig:
    section = _mapping(value, where, _keys(WebmailConfig))
    return WebmailConfig(**_given(section, where, {}))


def _check_domain_overlaps(config: Config) -> None:
    """A domain has one fate on a host: stored, backed up or forwarded; two would be a routing contradiction."""
    owners = [("primary.domains", set(config.local_domains)),
              ("backup_mx.domains", set(config.backup_domains)),
              ("incoming_gateway.domains", set(config.forward_domains))]
    for i, (name_a, set_a) in enumerate(owners):
        for name_b, set_b in owners[i + 1:]:
            both = sorted(set_a & set_b)
            if both:
                raise ConfigError(name_b, f"{both[0]} is also in {name_a}: a domain is either local, "
                                          "backed up or forwarded on one host")


# ---------------------------------------------------------------------------------------------- host checks


def host_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address configured on this host's interfaces (netifaces)."""
    import netifaces

    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for name in netifaces.interfaces():
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in netifaces.ifaddresses(name).get(family, []):
                try:
                    found.add(ipaddress.ip_address(entry["addr"].split("%", 1)[0]))
                except (KeyError, ValueError):
                    continue
    return found


def _is_local(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, have: set) -> bool:
    # Linux answers for all of 127.0.0.0/8 on lo, though only 127.0.0.1 is listed.
    return addr in have or (addr.version == 4 and addr in ipaddress.ip_network("127.0.0.0/8")
                            and ipaddress.ip_address("127.0.0.1") in have)


def check_host_addresses(config: Config) -> None:
    have = host_addresses()
    checks = [(f"listen.{service}[{i}]", hp.host) for service in ListenConfig.__dataclass_fields__
              for i, hp in enumerate(getattr(config.listen, service))]
    checks += [(f"delivery.source_addresses[{i}]", a) for i, a in enumerate(config.delivery.source_addresses)]
    if config.outgoing_gateway is not None:
        checks += [(f"outgoing_gateway.egress[{i}].address", e.address)
                   for i, e in enumerate(config.outgoing_gateway.egress)]
    for where, host in checks:
        addr = ipaddress.ip_address(host)
        if addr.is_unspecified or _is_local(addr, have):
            continue
        raise ConfigError(where, f"{host} is not an address of this host (it has "
                                 f"{', '.join(sorted(str(a) for a in have)) or 'none'})")
