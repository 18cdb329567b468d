"""The Sieve language as ManageSieve needs it: is a script valid (PUTSCRIPT, CHECKSCRIPT, RFC 5804 §2.6, §2.12),
and which extensions to announce (the SIEVE capability, §1.7).

Both come from ``appliance.sieve`` (floor 1), the interpreter local delivery runs, so that a script this server
accepts is one delivery can run: ``check(text)`` raises ``SieveError`` whose text is one line ``line N: ...``,
and ``EXTENSIONS`` names what it implements.
"""

from __future__ import annotations

from appliance import sieve


def problem(text: str) -> str | None:
    """None when the script is valid, else the checker's one-line reason."""
    try:
        sieve.check(text)
    except sieve.SieveError as exc:
        return " ".join(str(exc).split()) or "invalid script"
    return None


def extensions() -> tuple[str, ...]:
    return tuple(sieve.EXTENSIONS)
