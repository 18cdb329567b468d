"""Who may call what: console sessions (signed cookie, CSRF token), API tokens with scopes, the login page.

Two doors, never mixed:

- **pages** (everything outside /api/): a session cookie made at /login (Secure, HttpOnly, SameSite=Strict,
  signed by Starlette's SessionMiddleware with a key kept under data_dir/web/), and every form POST carries the
  session's CSRF token (``form_of``). Administrators (the directory's admin flag) see the console; other users
  only their own page.
- **the API** (/api/...): ``Authorization: Bearer <token>`` only; a cookie grants nothing there, so a page of
  another site cannot make the browser call the API (no CSRF), and a token grants only its scopes.

Logins go through the service's Authenticator: the same bans, failure counts and login cache as IMAP and SMTP.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from appliance.web.context import web_of
from appliance.web.tokens import SCOPES

SESSION_COOKIE = "mailfleet_session"


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a signed-in user (``kind`` "session") or an API token (``kind`` "token")."""

    name: str  # the user's address, or "token:<name>"
    kind: str
    scopes: frozenset[str]
    admin: bool


class LoginRequired(Exception):
    """A page asked for a signed-in administrator or user; the app answers with a redirect to /login."""


def session_key(data_dir: Path) -> bytes:
    """The key that signs session cookies: made once, kept 0600 under data_dir/web/ (a restart keeps sessions)."""
    path = data_dir / "web" / "session.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path.read_bytes()


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first need (also before login: the login form carries one)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def signed_in(request: Request) -> Principal | None:
    """The user of this session, if it is signed in and neither too old nor idle too long."""
    session = request.session
    user = session.get("user")
    if not isinstance(user, str):
        return None
    settings = web_of(request).service.config.web.access
    now = time.time()
    since, seen = session.get("since", 0), session.get("seen", 0)
    if now - since > settings.session_lifetime or now - seen > settings.idle_timeout:
        session.clear()
        return None
    if now - seen > 60:
        session["seen"] = int(now)
    directory = web_of(request).service.directory
    admin = directory is not None and directory.is_admin(user)  # each request: a revoked flag counts at once
    return Principal(user, "session", frozenset(SCOPES) if admin else frozenset(), admin)


def require(request: Request, scope: str = "read") -> Principal:
    """A page for administrators: the signed-in admin, else LoginRequired (a redirect to /login)."""
    principal = signed_in(request)
    if principal is None:
        raise LoginRequired()
    if not principal.admin or scope not in principal.scopes:
        raise HTTPException(403, "this page is for administrators")
    return principal


def require_user(request: Request) -> Principal:
    """A page for any signed-in user (self-service)."""
    principal = signed_in(request)
    if principal is None:
        raise LoginRequired()
    return principal


def api(request: Request, scope: str = "read") -> Principal:
    """An API call: the bearer token's principal if it has `scope`, else 401 (no or unknown token) or 403."""
    header = request.headers.get("authorization", "")
    kind, _, secret = header.partition(" ")
    if kind.lower() != "bearer" or not secret.strip():
        raise HTTPException(401, "the API needs 'Authorization: Bearer <token>' (mailfleet web token add)",
                            headers={"WWW-Authenticate": 'Bearer realm="mailfleet"'})
    token = web_of(request).tokens.find(secret.strip())
    if token is None:
        raise HTTPException(401, "unknown API token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if scope not in token.scopes:
        raise HTTPException(403, f"token {token.name} lacks the scope {scope!r}")
    return Principal(f"token:{token.name}", "token", token.scopes, True)


async def form_of(request: Request) -> FormData:
    """The posted form of a page, after its CSRF token is checked against the session's (403 when it differs)."""
    form = await request.form(max_files=0, max_fields=200, max_part_size=64 * 1024)
    sent = form.get("csrf")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page and send it again")
    return form


def client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def audit(request: Request, principal: Principal, action: str, target: str, detail: str = "") -> None:
    """Write a change to the audit log (call it after the change succeeded, before answering)."""
    web_of(request).audit.record(principal.name, client_ip(request), action, target, detail)


def _next(request: Request, fallback: str = "/") -> str:
    """Where to go after login: a path of this site only (never //host or a scheme: no open redirect)."""
    target = request.query_params.get("next", "")
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return fallback


async def login_page(request: Request) -> Response:
    if signed_in(request) is not None:
        return RedirectResponse(_next(request), 303)
    return web_of(request).page(request, "login.html", next=_next(request))


async def login(request: Request) -> Response:
    web = web_of(request)
    form = await form_of(request)
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    authenticator = web.service.authenticator
    user = None
    if authenticator is not None and username and password and len(username) <= 320 and len(password) <= 1024:
        user = await authenticator.authenticate(username, password, client_ip(request))
    if user is None:
        return web.page(request, "login.html", status_code=401, next=_next(request), username=username,
                        error="Login failed: wrong address or password, or too many failed attempts from here.")
    request.session.clear()  # a new session at login: an old cookie (fixation) is not carried over
    now = int(time.time())
    request.session.update({"user": user, "since": now, "seen": now, "csrf": secrets.token_urlsafe(32)})
    directory = web.service.directory
    admin = directory is not None and directory.is_admin(user)
    return RedirectResponse(_next(request, "/" if admin else "/me"), 303)


async def logout(request: Request) -> Response:
    await form_of(request)
    request.session.clear()
    return RedirectResponse("/login", 303)


def login_redirect(request: Request) -> Response:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)


ROUTES: list[Any] = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
