"""Configuration: one YAML file validated once into an immutable Config (see reference.yml)."""

from appliance.config.loader import ConfigError, load_config, load_config_with_text, parse_config, parse_duration
from appliance.config.model import ROLES, Config, HostPort

__all__ = [
    "ROLES", "Config", "ConfigError", "HostPort", "load_config", "load_config_with_text", "parse_config",
    "parse_duration",
]
