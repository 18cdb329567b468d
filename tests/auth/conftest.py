"""Fixtures for the directory and authenticator tests."""

from __future__ import annotations

from types import SimpleNamespace

import argon2
import pytest

from appliance.auth.directory import Directory


@pytest.fixture
def fast_hasher() -> argon2.PasswordHasher:
    """Real argon2id, with small cost parameters so that the suite stays quick."""
    return argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=argon2.Type.ID)


@pytest.fixture
def config_user():
    """Builds objects shaped like the config loader's user entries (address, password_hash, quota)."""
    return lambda address, password_hash, quota=0: SimpleNamespace(
        address=address, password_hash=password_hash, quota=quota
    )


@pytest.fixture
def make_directory(tmp_path, fast_hasher):
    made = []

    def make(**kwargs) -> Directory:
        kwargs.setdefault("password_hasher", fast_hasher)
        directory = Directory(tmp_path / "directory.sqlite", **kwargs)
        made.append(directory)
        return directory

    yield make
    for directory in made:
        directory.close()
