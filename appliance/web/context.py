"""What every request handler of the web service reaches through ``request.app.state.web``: the running host
(parts.py), the page templates, the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from appliance.web.audit import AuditLog
from appliance.web.parts import Service
from appliance.web.tokens import TokenStore

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class Web:
    service: Service
    templates: Jinja2Templates
    tokens: TokenStore
    menu: list[tuple[str, str]]  # (path, label) of the console's pages, from each module's MENU
    audit: AuditLog

    def page(self, request: Request, template: str, status_code: int = 200,
             headers: dict[str, str] | None = None, **values: Any) -> HTMLResponse:
        """A page of the console: the template with the signed-in user and the CSRF token its forms carry."""
        from appliance.web.access import csrf_token, signed_in  # access.py builds on this module

        values.setdefault("user", signed_in(request))
        values.setdefault("csrf", csrf_token(request))
        return self.templates.TemplateResponse(request, template, values, status_code=status_code, headers=headers)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def templates() -> Jinja2Templates:
    """Autoescaped HTML templates (Starlette's default environment escapes .html)."""
    return Jinja2Templates(directory=str(TEMPLATES))
