"""Shared fixtures: every real peer the tests talk to lives in tests/peers/ as a pytest plugin."""

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # `peers` lives in tests/

pytest_plugins = [
    "peers.named", "peers.smtp_sink", "peers.postfix_sink", "peers.mailfleet", "peers.disk", "peers.https_collector",
    "peers.browser",
    # the content scanners: each a real daemon the tests start
    "peers.clamd", "peers.spamd", "peers.rspamd", "peers.milter",
]

# Property tests judge what the code does, not how fast a shared machine runs it: no per-example deadline
# (hypothesis' 200 ms default fails a correct example when another process takes the CPU), and no health
# check that fails a test because generating its data was slow.
settings.register_profile("mailfleet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mailfleet")
