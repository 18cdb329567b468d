"""The web application: the routes of every part of the console, behind the security headers and the session.

Each part is a module with a ``ROUTES`` list (access.py, dashboard.py, ...); MODULES names them in the order of
the console's menu. No part imports another's handlers: they meet in context.py and access.py.
"""

from __future__ import annotations

import logging
from types import ModuleType

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.web import access, dashboard, selfservice
from appliance.web.audit import AuditLog
from appliance.web.audit import store_path as audit_path
from appliance.web.context import STATIC, Web, templates, web_of
from appliance.web.parts import Service
from appliance.web.tokens import TokenStore, store_path

log = logging.getLogger("appliance.web")

MODULES: list[ModuleType] = [access, dashboard, selfservice]

# Strict CSP: nothing from another origin, no inline script or style, no framing (clickjacking), forms post
# here only. The console's pages need no script at all; its one stylesheet is /static/console.css.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Every response gets the headers above (a route may set its own Cache-Control first)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if _is_api(request):
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=headers)
    return web_of(request).page(request, "error.html", status_code=exc.status_code, headers=headers,
                                status=exc.status_code, error=exc.detail)


async def _login_required(request: Request, exc: Exception) -> Response:
    return access.login_redirect(request)


async def _crash(request: Request, exc: Exception) -> Response:
    """A bug, not the caller's fault: logged with its traceback here, a plain 500 to the caller."""
    log.error("web: %s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
    if _is_api(request):
        return JSONResponse({"error": "internal error; the server log has the details"}, 500)
    return Response("Internal error; the server log has the details.\n", 500, media_type="text/plain")


def build_app(service: Service) -> Starlette:
    config = service.config
    routes = [route for module in MODULES for route in module.ROUTES]
    routes.append(Mount("/static", StaticFiles(directory=str(STATIC)), name="static"))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(SessionMiddleware, secret_key=access.session_key(config.data_dir).hex(),
                       session_cookie=access.SESSION_COOKIE, max_age=int(config.web.access.session_lifetime),
                       same_site="strict", https_only=True),
        ],
        exception_handlers={HTTPException: _http_error, access.LoginRequired: _login_required, Exception: _crash},
    )
    menu = [item for module in MODULES for item in getattr(module, "MENU", [])]
    app.state.web = Web(service, templates(), TokenStore(store_path(config.data_dir)), menu,
                        AuditLog(audit_path(config.data_dir)))
    return app
