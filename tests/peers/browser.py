"""A real browser: Debian's Chromium (/usr/bin/chromium), headless, driven by Playwright (no browser download).

`browser_factory(trust=[cert.pem, ...])` launches Chromium trusting exactly those certificates' keys
(`--ignore-certificate-errors-spki-list`: a certificate error is ignored only for those public keys, so any
other certificate still fails as it would for a user). `screenshot(page, name)` keeps a picture of a step in
$MAILFLEET_ARTIFACTS (default: the test's tmp dir), the artifacts a CI run keeps.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying Google's hosts, which this network refuses.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def spki_hash(cert: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate: how Chromium names a key to trust."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def artifacts_dir(default: Path) -> Path:
    path = Path(os.environ.get("MAILFLEET_ARTIFACTS", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched: list[Any] = []

        def launch(trust: Sequence[Path] = ()) -> Any:
            args = list(ARGS)
            if trust:
                args.append("--ignore-certificate-errors-spki-list=" + ",".join(spki_hash(c) for c in trust))
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            launched.append(browser)
            return browser

        yield launch
        for browser in launched:
            browser.close()


@pytest.fixture
def screenshot(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """Save a PNG of the page as <artifacts>/<test name>-<step>.png and return its path."""
    def take(page: Any, step: str) -> Path:
        path = artifacts_dir(tmp_path) / f"{request.node.name}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
