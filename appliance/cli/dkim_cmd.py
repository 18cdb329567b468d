"""`mailfleet dkim list [--json] | record DOMAIN | import DOMAIN SELECTOR KEYFILE | check | rotate DOMAIN`.

The command writes the host's key store (Config.dkim_dir) itself, under each domain's lock, as `mailfleet ban`
writes bans.sqlite: the running signers see a switch at their next message by keys.json's mtime, with no signal.
DNS is asked through the host's resolver (the dns section), a fresh one per lookup, so that a record just added
is not hidden by a cached negative answer. Errors are one line, exit 2; a rotation that times out waiting for
DNS exits 1 and leaves its selectors pending for the periodic pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config import Config, load_config, parse_duration
from appliance.dns.resolver import DNSError
from appliance.signing.keys import (
    KeyRecord,
    KeyStoreError,
    check_domain,
    check_selector,
    zone_line,
)
from appliance.signing.rotation import Rotation, RotationError, when

POLL = 5.0  # seconds between two looks at DNS while `rotate` waits


def register(subparsers: argparse._SubParsersAction) -> None:
    """The actions and their arguments: ``_ACTIONS``, at the end of the module, below the functions it names."""
    group = subparsers.add_parser("dkim", help="list, import, publish and rotate the DKIM signing keys")
    actions = group.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    for name, text, func, arguments in _ACTIONS:
        parser = actions.add_parser(name, help=text)
        for argument, options in arguments:
            parser.add_argument(argument, **options)
        parser.set_defaults(func=_guarded(func))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The store's, DNS's and the rotation's errors as one line and exit 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (KeyStoreError, RotationError) as exc:
            return _error(exc)
        except DNSError as exc:
            return _error(f"DNS: {exc}")
    return run


def _rotation(args: argparse.Namespace) -> tuple[Config, Rotation]:
    config = load_config(args.config, check_host=False)
    return config, Rotation.from_config(config)


def _list(args: argparse.Namespace) -> int:
    _, rotation = _rotation(args)
    rows = asyncio.run(_rows(rotation))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no DKIM keys")
    for row in rows:
        dns_word = {True: "in DNS", False: "not in DNS", None: "-"}[row["visible"]]
        retire = f"  until {when(row['retire_at'])}" if row["retire_at"] is not None else ""
        print(f"{row['domain']}  {row['selector']}  {row['algorithm']}  {row['state']} since {when(row['since'])}"
              f"{retire}  {dns_word}")
    return 0


async def _rows(rotation: Rotation) -> list[dict[str, Any]]:
    rows = []
    for domain in rotation.store.domains():
        keys = rotation.store.read(domain)
        for record in keys.records:
            visible = await rotation.visible(keys, record) if record.published else None
            rows.append({"domain": domain, "selector": record.selector, "algorithm": record.algorithm,
                         "state": record.state, "since": record.since, "retire_at": record.retire_at,
                         "visible": visible})
    return rows


def _record(args: argparse.Namespace) -> int:
    domain = check_domain(args.domain)
    _, rotation = _rotation(args)
    keys = rotation.store.read(domain)
    published = [r for r in keys.records if r.published]
    if not published:
        return _error(f"{domain} has no DKIM keys (make them with `mailfleet dkim rotate {domain}`)")
    for record in published:
        print(zone_line(domain, record.selector, record.algorithm, keys.public(record.selector)))
    return 0


def _import(args: argparse.Namespace) -> int:
    domain, selector = check_domain(args.domain), check_selector(args.selector)
    try:
        pem = Path(args.keyfile).read_bytes()
    except OSError as exc:
        return _error(f"{args.keyfile}: {exc.strerror or exc}")
    _, rotation = _rotation(args)
    record, added = rotation.import_key(domain, selector, pem, args.keyfile)
    if not added:
        print(f"{domain} {selector}: unchanged ({record.state})")
        return 0
    print(f"{domain} {selector}: imported ({record.algorithm}), pending until its record is seen in DNS")
    return 0


def _check(args: argparse.Namespace) -> int:
    _, rotation = _rotation(args)
    changes = []
    for domain in rotation.store.domains():
        changes += asyncio.run(rotation.check_domain(domain))
    for change in changes:
        print(change)
    if not changes:
        print("nothing changed")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    domain = check_domain(args.domain)
    wait = 0.0 if args.no_wait else parse_duration(args.wait, "--wait")
    config, rotation = _rotation(args)
    try:
        asyncio.run(rotation.probe(domain))  # DNS down: stop here, before anything changes
    except DNSError as exc:
        return _error(f"DNS: {exc} (no key made, nothing changed)")
    old = [r for r in rotation.store.read(domain).records if r.state == "active"]
    new = rotation.new_selectors(domain)
    try:
        rotation.publish(domain, new)
    except RotationError:
        rotation.forget(domain, new)
        raise
    _announce(rotation, domain, new)
    if args.no_wait:
        print(f"left pending: the queue process switches to them once DNS shows them "
              f"(every {config.dkim.check_interval:g}s)")
        return 0
    if not asyncio.run(_wait_visible(rotation, domain, new, wait)):
        print(f"mailfleet: {', '.join(r.selector for r in new)} not visible in DNS after {args.wait}; they stay "
              "pending and the queue process switches to them once they are", file=sys.stderr)
        return 1
    changes = asyncio.run(rotation.check_domain(domain))
    for change in changes:
        print(change)
    if old:
        until = max((r.retire_at or 0) for r in rotation.store.read(domain).records
                    if r.selector in {o.selector for o in old})
        print(f"the old selectors {', '.join(r.selector for r in old)} stay published until {when(until)}")
    return 0


def _announce(rotation: Rotation, domain: str, new: list[KeyRecord]) -> None:
    keys = rotation.store.read(domain)
    if rotation.publisher is not None:
        print(f"published {', '.join(r.selector for r in new)} by DNS update")
        return
    print(f"publish these records in the zone of {domain}:")
    for record in new:
        print(zone_line(domain, record.selector, record.algorithm, keys.public(record.selector)))


async def _wait_visible(rotation: Rotation, domain: str, new: list[KeyRecord], wait: float) -> bool:
    deadline = time.monotonic() + wait
    keys = rotation.store.read(domain)
    while True:
        if all([await rotation.visible(keys, r) for r in new]):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(POLL, max(0.0, deadline - time.monotonic())))


def _error(reason: object) -> int:
    print(f"mailfleet: {reason}", file=sys.stderr)
    return 2


Argument = tuple[str, dict[str, Any]]
_DOMAIN: Argument = ("domain", {"metavar": "DOMAIN"})
_ACTIONS: tuple[tuple[str, str, Callable[[argparse.Namespace], int], tuple[Argument, ...]], ...] = (
    ("list", "every domain's selectors: algorithm, state, since, retire_at, whether DNS shows them", _list,
     (("--json", {"action": "store_true", "help": "machine-readable output"}),)),
    ("record", "the TXT records to publish for a domain (zone-file lines)", _record, (_DOMAIN,)),
    ("import", "take a PEM private key made elsewhere as a pending selector", _import,
     (_DOMAIN, ("selector", {"metavar": "SELECTOR"}), ("keyfile", {"metavar": "KEYFILE"}))),
    ("check", "the periodic pass now: activate what DNS shows, retire what expired", _check, ()),
    ("rotate", "new rsa and ed25519 selectors: publish, wait for DNS, switch", _rotate,
     (_DOMAIN,
      ("--wait", {"default": "1h", "metavar": "DURATION", "help": "how long to wait for DNS (default 1h)"}),
      ("--no-wait", {"action": "store_true", "help": "leave them pending; the queue process switches later"}))),
)
