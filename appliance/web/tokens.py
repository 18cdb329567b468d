"""API tokens: a name, the scopes it may use, and the SHA-256 of its secret (data_dir/web/tokens.sqlite).

The secret is shown once, when `mailfleet web token add` makes it; only its hash is kept, so a copy of the file
grants nothing. A token is 32 random bytes: a hash look-up is as safe as a constant-time compare for it.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.durable.sqlite import enable_wal

#: What a token (or an admin's session, which has them all) may do; "read" is every GET of the API.
SCOPES = {
    "read": "read every page of the API",
    "directory": "change domains, users, aliases, catch-alls and quotas",
    "queue": "flush, delete and bounce queued messages",
    "quarantine": "release and delete held messages",
    "bans": "ban and unban client addresses",
    "dkim": "rotate DKIM keys",
    "fleet": "the node API the fleet console of another node reads",
}
PREFIX = "mf_"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL
) WITHOUT ROWID;
"""


class TokenError(ValueError):
    """A refused token change; the message is one line for the administrator."""


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]
    created: float
    last_used: float | None


def store_path(data_dir: Path) -> Path:
    return data_dir / "web" / "tokens.sqlite"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def check_scopes(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    unknown = sorted(set(scopes) - SCOPES.keys())
    if unknown:
        raise TokenError(f"unknown scope {unknown[0]!r} (expected some of {', '.join(SCOPES)})")
    if not scopes:
        raise TokenError(f"a token needs at least one scope ({', '.join(SCOPES)})")
    return frozenset(scopes)


class TokenStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        enable_wal(self._conn)
        self._conn.executescript(_SCHEMA)

    def add(self, name: str, scopes: list[str] | tuple[str, ...], secret: str | None = None) -> str:
        """Make a token and return its secret (shown once). `secret` is for tokens Ansible distributes."""
        name = name.strip()
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise TokenError(f"token name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
        wanted = check_scopes(scopes)
        if secret is None:
            secret = PREFIX + secrets.token_urlsafe(32)
        elif len(secret) < 32:
            raise TokenError(f"token {name}: a given secret needs at least 32 characters")
        with self._lock:
            try:
                self._conn.execute("INSERT INTO tokens (name, digest, scopes, created) VALUES (?, ?, ?, ?)",
                                   (name, _digest(secret), " ".join(sorted(wanted)), time.time()))
            except sqlite3.IntegrityError:
                raise TokenError(f"token {name}: already exists (or its secret is another token's)") from None
        return secret

    def put(self, name: str, scopes: list[str] | tuple[str, ...], secret: str) -> None:
        """Create or replace a token with a given secret (idempotent: what a deployment tool calls each run)."""
        with self._lock:
            self._conn.execute("DELETE FROM tokens WHERE name = ?", (name,))
        self.add(name, scopes, secret)

    def delete(self, name: str) -> None:
        with self._lock:
            if self._conn.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount == 0:
                raise TokenError(f"token {name}: no such token")

    def list(self) -> list[Token]:
        with self._lock:
            rows = self._conn.execute("SELECT name, scopes, created, last_used FROM tokens ORDER BY name").fetchall()
        return [Token(n, frozenset(s.split()), c, u) for n, s, c, u in rows]

    def find(self, secret: str) -> Token | None:
        """The token whose secret this is; its last use is noted (at most once a minute)."""
        digest = _digest(secret)
        with self._lock:
            row = self._conn.execute("SELECT name, scopes, created, last_used FROM tokens WHERE digest = ?",
                                     (digest,)).fetchone()
            if row is None:
                return None
            now = time.time()
            if row[3] is None or now - row[3] > 60:
                self._conn.execute("UPDATE tokens SET last_used = ? WHERE digest = ?", (now, digest))
        return Token(row[0], frozenset(row[1].split()), row[2], row[3])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
