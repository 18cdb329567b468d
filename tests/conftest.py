"""Shared fixtures: every real peer the tests talk to lives in tests/peers/ as a pytest plugin."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # `peers` lives in tests/

pytest_plugins = ["peers.named", "peers.smtp_sink", "peers.postfix_sink", "peers.mailfleet", "peers.disk"]
