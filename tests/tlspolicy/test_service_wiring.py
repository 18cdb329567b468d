"""The composition root builds the TLS policies from outbound_tls: the MTA-STS cache lives under data_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.service.root import Appliance, Mode


@pytest.mark.parametrize("section, cached", [("{}", True), ("{mta_sts: false}", False)])
async def test_the_queue_process_keeps_its_mta_sts_cache_under_data_dir(tmp_path: Path, section: str,
                                                                       cached: bool) -> None:
    config = parse_config(f"hostname: gw.example.net\ndata_dir: {tmp_path}\nroles: [outgoing_gateway]\n"
                          "outgoing_gateway: {relay_networks: [127.0.0.0/8]}\n"
                          f"outbound_tls: {section}\n", check_host=False)
    app = Appliance(config, Mode.QUEUE)
    try:
        assert (tmp_path / "mta-sts.sqlite").exists() is cached
    finally:
        app.spool.close()
        if app.tls_policy is not None:
            app.tls_policy.close()
