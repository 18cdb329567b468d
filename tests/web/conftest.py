"""A running mailfleet with its web listener (HTTPS on loopback, a test certificate for 127.0.0.1), an
administrator in its directory, and clients that log in the way a browser does (GET the form, POST it with its
CSRF token) or call the API with a bearer token."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from peers.mailfleet import RunningMailfleet
from peers.tls import self_signed_cert

ADMIN, ADMIN_PASSWORD = "admin@example.org", "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, f"no CSRF field in the page:\n{page[:2000]}"
    return found.group(1)


@dataclass
class WebNode:
    mf: RunningMailfleet
    url: str
    context: ssl.SSLContext
    cert: Path  # the listener's certificate (a browser is told to trust it: tests/peers/browser.py)

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.context, timeout=20, **options)

    def login(self, address: str = ADMIN, password: str = ADMIN_PASSWORD) -> httpx.Client:
        """A client with a signed-in session (asserted: the login answers 303 to the console or /me)."""
        client = self.client()
        response = self.post_form(client, "/login", {"username": address, "password": password})
        assert response.status_code == 303, response.text
        return client

    def post_form(self, client: httpx.Client, path: str, fields: dict[str, str], page: str | None = None,
                  ) -> httpx.Response:
        """POST a form the way a browser does: with the CSRF token of the page that shows it."""
        shown = client.get(page or ("/login" if path == "/login" else path.rsplit("/", 1)[0] or "/"))
        return client.post(path, data={"csrf": csrf_of(shown.text), **fields})

    def token(self, *scopes: str, name: str = "test") -> str:
        args = ["web", "token", "add", name]
        for scope in scopes:
            args += ["--scope", scope]
        done = self.mf.cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def api(self, token: str) -> httpx.Client:
        return self.client(headers={"Authorization": f"Bearer {token}"})

    def add_user(self, address: str, password: str, *extra: str) -> None:
        done = self.mf.cli("user", "add", address, "--password-stdin", *extra, input=password + "\n")
        assert done.returncode == 0, done.stderr


@pytest.fixture
def web_factory(mailfleet_factory: Callable[..., RunningMailfleet], tmp_path: Path,
                ) -> Iterator[Callable[..., WebNode]]:
    def start(config: dict[str, Any] | None = None, services: tuple[str, ...] = ("smtp", "web"),
              name: str = "mf", admin: bool = True) -> WebNode:
        cert = self_signed_cert(tmp_path / f"{name}-tls", f"{name}.test.example", ("127.0.0.1",))
        config = {"roles": ["primary"], "primary": {"domains": ["example.org"]}, **(config or {})}
        config.setdefault("tls", {"cert": str(cert.cert), "key": str(cert.key), "plaintext_auth_on_loopback": True})
        mf = mailfleet_factory(config, services=services, name=name)
        node = WebNode(mf, f"https://127.0.0.1:{mf.ports['web']}", ssl.create_default_context(cafile=str(cert.cert)),
                       cert.cert)
        if admin and "primary" in config["roles"]:
            node.add_user(ADMIN, ADMIN_PASSWORD, "--admin")
        return node

    yield start


@pytest.fixture
def web(web_factory: Callable[..., WebNode]) -> WebNode:
    return web_factory()
