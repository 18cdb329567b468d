"""A user's own page: the address, the mailbox's use against its quota."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.web.access import require_user
from appliance.web.context import web_of


async def me(request: Request) -> Response:
    principal = require_user(request)
    web = web_of(request)
    directory, store = web.service.directory, web.service.store
    quota = directory.quota(principal.name) if directory is not None else 0
    used = store.account(principal.name).quota()[0] if store is not None else 0
    return web.page(request, "me.html", quota=quota, used=used)


ROUTES: list[Any] = [Route("/me", me, methods=["GET"])]
