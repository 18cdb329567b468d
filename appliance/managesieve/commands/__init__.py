"""One module per group of ManageSieve commands; importing them fills ``REGISTRY``."""

from appliance.managesieve.commands import auth, connection, scripts
from appliance.managesieve.commands.registry import REGISTRY

__all__ = ["REGISTRY", "auth", "connection", "scripts"]
