"""Each default is set once, in appliance/config/model.py; reference.yml and the Ansible role defaults agree with it.

Values are compared after the loader has parsed them ('2s' is 2.0, 'auto' workers the model's count), so a
default changed in one place only fails here.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from appliance.config import Config, parse_config
from appliance.config.model import (
    AuthConfig,
    BackupMXConfig,
    DeliveryConfig,
    DNSConfig,
    FiltersConfig,
    IncomingGatewayConfig,
    ListenConfig,
    OutgoingGatewayConfig,
    PrimaryConfig,
    QueueConfig,
    SMTPConfig,
    TLSConfig,
    field_default,
)

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "appliance" / "config" / "reference.yml"
# Keys of reference.yml that show an example rather than the default (which is empty).
EXAMPLES = {"primary.users", "primary.aliases", "filters.scanners"}
# Role variables that are the deployment's choice, not the service's default: the service by itself opens no
# listener, the roles open the standard ports.
ROLE_CHOICES = {"appliance_listen_smtp", "primary_listen_submission", "primary_listen_imap", "primary_listen_pop3",
                "primary_listen_managesieve"}
_JINJA_VARIABLE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


def _sections() -> dict[str, type]:
    """Config field -> its section dataclass (listen, smtp, ..., primary, ...)."""
    hints = typing.get_type_hints(Config)
    found = {}
    for spec in dataclasses.fields(Config):
        hint = hints[spec.name]
        cls = next((t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None)
        if cls is not None:
            found[spec.name] = cls
    return found


SECTIONS = _sections()
# Every key a file may hold, as a dotted path; `source` is where the config was read from, not a key.
MODEL_KEYS = [spec.name for spec in dataclasses.fields(Config) if spec.name not in SECTIONS and spec.name != "source"]
MODEL_KEYS += [f"{name}.{spec.name}" for name, cls in SECTIONS.items() for spec in dataclasses.fields(cls)]


def model_default(path: str) -> Any:
    """The model's default for a dotted key; KeyError when the key is required."""
    section, _, name = path.rpartition(".")
    return field_default(SECTIONS[section] if section else Config, name)


def has_default(path: str) -> bool:
    try:
        model_default(path)
    except KeyError:
        return False
    return True


def parsed(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def reference_doc() -> dict[str, Any]:
    return yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))


def reference_keys(doc: dict[str, Any]) -> list[str]:
    return [f"{key}.{sub}" if key in SECTIONS else key
            for key, value in doc.items() for sub in ((value or {}) if key in SECTIONS else [None])]


def parse_with(doc: dict[str, Any], path: str, value: Any) -> Config:
    """The reference with the key at `path` set to `value`, through the real loader."""
    doc = copy.deepcopy(doc)
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return parse_config(yaml.safe_dump(doc), source="test", base_dir=REPO, check_host=False)


def test_reference_lists_every_key_of_the_model() -> None:
    keys = reference_keys(reference_doc())
    assert sorted(keys) == sorted(MODEL_KEYS)
    assert EXAMPLES <= set(MODEL_KEYS)


def test_reference_shows_the_model_defaults() -> None:
    doc = reference_doc()
    config = parse_config(REFERENCE.read_text(encoding="utf-8"), base_dir=REPO, check_host=False)
    checked, wrong = [], []
    for path in reference_keys(doc):
        if path in EXAMPLES or not has_default(path):
            continue
        checked.append(path)
        if parsed(config, path) != model_default(path):
            wrong.append(f"{path}: reference.yml has {parsed(config, path)!r}, the model {model_default(path)!r}")
    assert not wrong, "\n".join(wrong)
    assert len(checked) >= 35, checked


def test_a_file_that_leaves_keys_out_gets_the_model_defaults() -> None:
    config = parse_config(yaml.safe_dump({
        "hostname": "mx1.example.net",
        "roles": ["primary", "backup_mx", "incoming_gateway", "outgoing_gateway"],
        "primary": {"domains": ["example.org"]},
        "backup_mx": {"domains": {"example.com": {"primary_hosts": ["mail.example.com"]}}},
        "incoming_gateway": {"domains": {"example.net": {"destinations": ["mail.example.net"]}}},
    }), check_host=False)
    assert config.data_dir == field_default(Config, "data_dir")
    assert config.log_level == field_default(Config, "log_level")
    for section in (ListenConfig, TLSConfig, DNSConfig, SMTPConfig, AuthConfig, DeliveryConfig, QueueConfig,
                    FiltersConfig, OutgoingGatewayConfig):
        name = next(name for name, cls in SECTIONS.items() if cls is section)
        assert getattr(config, name) == section(), name
    assert config.primary == PrimaryConfig(domains=("example.org",))
    assert config.backup_mx == BackupMXConfig(domains=config.backup_mx.domains)
    assert config.incoming_gateway == IncomingGatewayConfig(domains=config.incoming_gateway.domains)
    assert config.backup_mx.domains["example.com"].recipients == frozenset()


def test_mappings_of_a_loaded_config_are_read_only() -> None:
    config = parse_config(REFERENCE.read_text(encoding="utf-8"), base_dir=REPO, check_host=False)
    assert config.primary is not None and config.backup_mx is not None and config.incoming_gateway is not None
    mappings = {"primary.aliases": config.primary.aliases, "primary.catch_all": config.primary.catch_all,
                "backup_mx.domains": config.backup_mx.domains,
                "incoming_gateway.domains": config.incoming_gateway.domains,
                "backup_domains": config.backup_domains, "forward_domains": config.forward_domains}
    for where, mapping in mappings.items():
        assert isinstance(mapping, MappingProxyType), where
        with pytest.raises(TypeError):
            mapping["x@example.org"] = ()  # type: ignore[index]
    assert config.primary.aliases["postmaster@example.org"] == ("alice@example.org",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.primary.aliases = {}  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- role defaults


def role_defaults() -> dict[str, tuple[str, Any]]:
    """Every role variable with a default: name -> (role, value)."""
    found = {}
    for path in sorted((REPO / "roles").glob("*/defaults/main.yml")):
        for name, value in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items():
            found[name] = (path.parent.parent.name, value)
    return found


def _by_name(role: str, name: str) -> str | None:
    """The config key a role variable names by convention: <role>_<key> of the role's own section,
    <role>_<top-level key>, or <role>_<section>_<key>."""
    if not name.startswith(f"{role}_"):
        return None
    rest = name[len(role) + 1:]
    if role in SECTIONS and f"{role}.{rest}" in MODEL_KEYS:
        return f"{role}.{rest}"
    if rest in MODEL_KEYS:
        return rest
    return next((f"{section}.{rest[len(section) + 1:]}" for section in SECTIONS
                 if rest.startswith(f"{section}_") and f"{section}.{rest[len(section) + 1:]}" in MODEL_KEYS), None)


def _in_templates(names: set[str]) -> dict[str, set[str]]:
    """Role variable -> the config keys it is rendered into, read from the roles' and playbooks' YAML: a value
    that is exactly "{{ variable }}" at a key path ending in a config key (the longest such ending)."""
    found: dict[str, set[str]] = {}

    def walk(node: Any, keys: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*keys, str(key)))
        elif isinstance(node, list):
            for item in node:
                walk(item, keys)
        elif isinstance(node, str) and (match := _JINJA_VARIABLE.match(node.strip())) and match[1] in names:
            ending = next((".".join(keys[i:]) for i in range(len(keys)) if ".".join(keys[i:]) in MODEL_KEYS), None)
            if ending is not None:
                found.setdefault(match[1], set()).add(ending)

    for path in sorted([*(REPO / "roles").rglob("*.yml"), *(REPO / "playbooks").rglob("*.yml")]):
        if path.name != "main.yml" or path.parent.name != "defaults":
            walk(yaml.safe_load(path.read_text(encoding="utf-8")), ())
    return found


def role_config_keys() -> dict[str, str]:
    """Role variable -> the config key it sets: from the templates, else from its name; the two must agree."""
    defaults = role_defaults()
    rendered = _in_templates(set(defaults))
    keys = {}
    for name, (role, _value) in defaults.items():
        by_name = _by_name(role, name)
        targets = rendered.get(name, set()) | ({by_name} if by_name else set())
        assert len(targets) <= 1, f"{name} names {by_name} but is rendered into {sorted(rendered[name])}"
        if targets:
            keys[name] = targets.pop()
    return keys


def test_role_variables_map_to_the_config_keys_they_are_rendered_into() -> None:
    keys = role_config_keys()
    assert {"appliance_smtp_max_message_size": "smtp.max_message_size", "appliance_queue_lifetime": "queue.lifetime",
            "appliance_log_level": "log_level", "primary_listen_submissions": "listen.submissions",
            "primary_smarthost": "delivery.smarthost", "backup_mx_retry_schedule": "backup_mx.retry_schedule",
            "outgoing_gateway_retry_schedule": "outgoing_gateway.retry_schedule"}.items() <= keys.items()


def test_role_defaults_are_the_model_defaults() -> None:
    defaults, doc = role_defaults(), reference_doc()
    checked, wrong = [], []
    for name, path in role_config_keys().items():
        value = defaults[name][1]
        if isinstance(value, str) and "{{" in value:
            continue  # derived from the inventory, not a default
        if not has_default(path):
            continue  # required: the inventory gives it
        got = parsed(parse_with(doc, path, value), path)
        if name in ROLE_CHOICES:
            assert got != model_default(path), f"{name} equals the model's default: drop it from ROLE_CHOICES"
            continue
        checked.append(name)
        if got != model_default(path):
            wrong.append(f"{name} ({path}): the role has {value!r}, the model {model_default(path)!r}")
    assert not wrong, "\n".join(wrong)
    assert len(checked) >= 15, checked


def test_content_filter_scanner_defaults_are_the_model_defaults() -> None:
    """content_filter_<type>_{timeout,max_scan_size,on_error} render each scanner entry whole: the entry the role
    writes by default is the one the loader builds from type and address alone."""
    defaults = role_defaults()
    kinds = [name.removeprefix("content_filter_").removesuffix("_enabled") for name in defaults
             if name.startswith("content_filter_") and name.endswith("_enabled")]
    assert sorted(kinds) == ["clamav", "rspamd", "spamassassin"]
    keys = ("timeout", "max_scan_size", "on_error")
    for kind in kinds:
        given = {key: defaults[f"content_filter_{kind}_{key}"][1] for key in keys}
        bare = {"type": kind, "address": "127.0.0.1:1"}
        role, model = (parse_with(reference_doc(), "filters.scanners", [entry]).filters.scanners[0]
                       for entry in ({**bare, **given}, bare))
        assert role == model, kind
