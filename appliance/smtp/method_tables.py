"""aiosmtpd's per-connection method tables, computed once per class instead of once per connection.

aiosmtpd's ``SMTP.__init__`` finds its command methods (``smtp_*``), the handler's hooks (``handle_*``) and the
AUTH mechanisms (``auth_*``) by introspection: ``dir(self)``, ``dir(handler)``, ``inspect.getmembers`` over both,
and ``inspect.signature`` of the EHLO hook, for every new connection. Measured under load that was an eighth of
an SMTP acceptor's CPU time. The classes involved do not change while the server runs, so the names can be
looked up once per class; the bound methods are still taken from each new instance.

``install()`` points the two names aiosmtpd.smtp uses (``dir`` and ``inspect``) at caching stand-ins. They
answer only what aiosmtpd asks at those call sites (names by prefix; ``getmembers`` is filtered for ``auth_``),
which tests/smtp check through the behaviour they feed: every command, hook and AUTH mechanism still works.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import aiosmtpd.smtp


@functools.lru_cache(maxsize=256)
def _class_names(cls: type) -> tuple[str, ...]:
    return tuple(name for name in dir(cls) if name.startswith(("smtp_", "handle_", "auth_")))


def _names(obj: Any) -> list[str]:
    """dir() as aiosmtpd.smtp uses it: only the method-name prefixes it filters on, taken from the class.
    An instance attribute with such a name (nothing sets one) would be missed, so fall back when one exists."""
    own = getattr(obj, "__dict__", None)
    if own and any(k.startswith(("smtp_", "handle_", "auth_")) for k in own):
        return dir(obj)
    return list(_class_names(type(obj)))


class _Inspect:
    """The two ``inspect`` functions aiosmtpd.smtp calls."""

    @staticmethod
    def getmembers(obj: Any) -> list[tuple[str, Any]]:
        return [(name, getattr(obj, name)) for name in _names(obj) if name.startswith("auth_")]

    @staticmethod
    def signature(func: Any) -> inspect.Signature:
        target = getattr(func, "__func__", None)
        if target is None:
            return inspect.signature(func)
        # The signature of a bound method: the function's, without ``self``.
        params = list(_function_signature(target).parameters.values())[1:]
        return inspect.Signature(params)


@functools.lru_cache(maxsize=64)
def _function_signature(func: Any) -> inspect.Signature:
    return inspect.signature(func)


def install() -> None:
    if getattr(aiosmtpd.smtp, "dir", None) is _names:
        return
    aiosmtpd.smtp.dir = _names  # type: ignore[attr-defined]  # module globals come before builtins
    aiosmtpd.smtp.inspect = _Inspect  # type: ignore[attr-defined]
