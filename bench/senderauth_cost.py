"""What sender authentication costs per message: CPU ms of the MAIL and DATA checks, with and without it.

A real BIND (tests/peers/named.py) serves the sender's SPF, DKIM (rsa 2048 and ed25519) and DMARC records and
the client's PTR/A; the pipeline is the one ``appliance.service.checks`` builds, without the SMTP engine, so that
the figure is the checks' own: process CPU time (every thread: pyspf and dkimpy run in the pool) over N
messages, each signed twice, for

- off: sender_auth.enabled false (only the removal of forged Authentication-Results runs);
- on, cached: the resolver's cache answers after the first message (one sender domain, as a busy MX sees);
- on, uncached: the cache emptied before every message (every lookup goes to BIND).

    .venv/bin/python bench/senderauth_cost.py --messages 500
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from peers.named import start_named  # noqa: E402
from senderauth.test_senderauth_e2e import GOOD, _message, _signed, _zones  # noqa: E402

from appliance.config import parse_config  # noqa: E402
from appliance.pipeline.recipients import RecipientPolicy  # noqa: E402
from appliance.pipeline.stages import MailFrom, Stage  # noqa: E402
from appliance.service.checks import build_pipeline  # noqa: E402


@dataclass
class Client:
    ip: str = GOOD
    host_name: str | None = "mail.sender.test"
    login: str | None = None
    verdicts: dict[str, object] = field(default_factory=dict)


@dataclass
class Transaction:
    content: bytes
    mail_from: str | None = "bob@sender.test"
    rcpt_tos: list[str] = field(default_factory=lambda: ["alice@home.test"])
    accepted: list[tuple[str, tuple[str, ...]]] = field(default_factory=lambda: [("alice@home.test",
                                                                                   ("alice@home.test",))])
    meta: dict[str, object] = field(default_factory=dict)
    size: int = 0
    smtp_utf8: bool = False
    verdicts: dict[str, object] = field(default_factory=dict)
    added_headers: list[tuple[str, str]] = field(default_factory=list)
    oversize: bool = False
    long_line: bool = False
    bare_line_ending: bool = False
    nul: bool = False


async def _run(pipeline, messages: int, data: bytes, uncached: bool, lookups_of) -> float:
    async def one() -> None:
        client, transaction = Client(), Transaction(data)
        for stage, argument in ((Stage.MAIL, MailFrom("bob@sender.test", 0)), (Stage.DATA, data)):
            outcome = pipeline.run(stage, client, transaction, argument)
            if outcome is not None and not hasattr(outcome, "action"):
                outcome = await outcome
            assert outcome is None or not outcome.refused, outcome
    await one()  # warm: the public suffix list, the thread pool, imports
    start = time.process_time()
    for _ in range(messages):
        if uncached:
            lookups = lookups_of(pipeline)
            if lookups is not None:
                lookups.cache.flush()
        await one()
    return (time.process_time() - start) * 1000 / messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    data = _signed(_message("bob@sender.test", "bench", body="x" * 2000), ed=True)
    with tempfile.TemporaryDirectory() as work:
        named = start_named(Path(work) / "named", _zones())
        try:
            rows = []
            for label, enabled, uncached in (("off", False, False), ("on, cached", True, False),
                                             ("on, uncached", True, True)):
                config = parse_config(yaml.safe_dump({
                    "hostname": "mx.home.test", "roles": ["primary"], "data_dir": work,
                    "primary": {"domains": ["home.test"], "users": [{"address": "alice@home.test"}]},
                    "dns": {"nameservers": [named.address], "port": named.port, "timeout": "2s"},
                    "sender_auth": {"enabled": enabled}}), check_host=False)
                pipeline = build_pipeline(config, RecipientPolicy(config, None), None)
                owners = [getattr(check, "__self__", None) for check in pipeline.checks(Stage.DATA)]

                def lookups_of(_pipeline, owners=owners):
                    found = [owner.lookups for owner in owners if hasattr(owner, "lookups")]
                    return found[0] if found else None

                cost = asyncio.run(_run(pipeline, args.messages, data, uncached, lookups_of))
                asyncio.run(pipeline.stop())
                rows.append((label, cost))
        finally:
            named.stop()
    print(f"{'sender_auth':<14} CPU ms/message ({args.messages} messages, {len(data)} bytes, 2 DKIM signatures)")
    for label, cost in rows:
        print(f"{label:<14} {cost:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
