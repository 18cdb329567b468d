"""The console's first page: the state of this node at a glance."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.web.access import require
from appliance.web.context import web_of


async def dashboard(request: Request) -> Response:
    require(request)
    web = web_of(request)
    runner = web.service.runner
    return web.page(request, "dashboard.html", queued=len(runner.messages()) if runner is not None else 0)


ROUTES: list[Any] = [Route("/", dashboard, methods=["GET"])]
MENU = [("/", "Dashboard")]
