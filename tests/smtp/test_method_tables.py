"""aiosmtpd's command, hook and AUTH tables are the same with the per-class cache as with its own introspection."""

from __future__ import annotations

import asyncio
import builtins
import inspect

import aiosmtpd.smtp

from appliance.smtp import method_tables
from appliance.smtp.server import InboundHandler, SMTPProtocol


def _tables(protocol: SMTPProtocol) -> tuple:
    return (
        {name: method.__func__ for name, method in protocol._smtp_methods.items()},
        {name: (attr.method.__func__, attr.is_builtin) for name, attr in protocol._auth_methods.items()},
        {name: hook.__func__ for name, hook in protocol._handle_hooks.items()},
        protocol._ehlo_hook_ver,
    )


async def _build() -> SMTPProtocol:
    handler = InboundHandler.__new__(InboundHandler)  # the class is what the tables come from
    return SMTPProtocol(handler, None, hostname="mx.test", loop=asyncio.get_running_loop())


def test_cached_tables_match_aiosmtpd_introspection() -> None:
    method_tables.install()
    cached = asyncio.run(_build())
    aiosmtpd.smtp.dir, aiosmtpd.smtp.inspect = builtins.dir, inspect
    try:
        reference = asyncio.run(_build())
    finally:
        del aiosmtpd.smtp.dir
        method_tables.install()
    assert _tables(cached) == _tables(reference)
    commands, auth, hooks, ehlo = _tables(cached)
    assert {"EHLO", "MAIL", "RCPT", "DATA", "AUTH", "STARTTLS"} <= set(commands)
    assert set(auth) >= {"PLAIN", "LOGIN"} and {"EHLO", "MAIL", "RCPT", "DATA"} <= set(hooks)
    assert ehlo == "new"
