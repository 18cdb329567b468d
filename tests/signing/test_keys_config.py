"""The dkim keys' config: retire_after may not be shorter than queue.lifetime (a queued message keeps a verifiable
signature), and dkim.publish is refused key by key when it could not sign an update."""

from __future__ import annotations

import pytest
import yaml

from appliance.config import ConfigError, parse_config

BASE = {"hostname": "mx.example.org", "roles": ["primary"], "primary": {"domains": ["example.org"]}}


def load(**sections: object):  # noqa: ANN201 - a Config
    return parse_config(yaml.safe_dump({**BASE, **sections}), source="t.yml", check_host=False)


def test_retire_after_shorter_than_the_queue_lifetime_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        load(dkim={"retire_after": "3d"})
    assert "dkim.retire_after" in str(caught.value) and "queue.lifetime (5d)" in str(caught.value)
    assert load(dkim={"retire_after": "5d"}).dkim.retire_after == 5 * 86400
    with pytest.raises(ConfigError, match="dkim.retire_after: 7d is shorter than queue.lifetime"):
        load(queue={"lifetime": "10d"})


def test_publish_settings() -> None:
    secret = "c2VjcmV0IHNlY3JldCBzZWNyZXQ="
    config = load(dkim={"publish": {"server": "ns1.example.org", "key_name": "mf", "key_secret": secret}})
    assert config.dkim.publish is not None
    assert (config.dkim.publish.port, config.dkim.publish.zone, config.dkim.publish.key_algorithm) == (
        53, None, "hmac-sha256")
    assert load().dkim.publish is None and load().dkim.check_interval == 300
    for publish, words in (
        ({"server": "ns1.example.org", "key_name": "mf"}, "dkim.publish.key_secret: is required"),
        ({"server": "ns1.example.org", "key_name": "mf", "key_secret": "not base64!"}, "is not base64"),
        ({"server": "ns1.example.org", "key_name": "mf", "key_secret": secret, "key_algorithm": "md4"},
         "dkim.publish.key_algorithm: unknown value 'md4'"),
        ({"server": "ns1.example.org", "key_name": "mf", "key_secret": secret, "port": 0}, "dkim.publish.port"),
        ({"server": "ns1.example.org", "key_name": "mf", "key_secret": secret, "ttl": 5},
         "dkim.publish.ttl: unknown key"),
    ):
        with pytest.raises(ConfigError, match=words):
            load(dkim={"publish": publish})
