"""Directory semantics: users, aliases, catch-all, loops, config merge, cross-process freshness."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys

import argon2
import hypothesis
import hypothesis.strategies as st
import pytest

from appliance.auth.directory import (
    AlreadyExistsError,
    DirectoryError,
    NotFoundError,
    ReadOnlyEntryError,
)


@pytest.fixture
def directory(make_directory):
    d = make_directory(config_domains=["example.org"])
    d.add_domain("example.net")
    d.add_user("alice@example.org", "alice-secret", quota=1000)
    d.add_user("bob@example.net", "bob-secret")
    return d


def test_users_are_stored_with_argon2id_and_no_clear_password(directory, tmp_path):
    rows = sqlite3.connect(tmp_path / "directory.sqlite").execute("SELECT address, password_hash FROM users")
    stored = dict(rows.fetchall())
    assert stored["alice@example.org"].startswith("$argon2id$")
    dump = (tmp_path / "directory.sqlite").read_bytes()
    assert b"alice-secret" not in dump


def test_password_verification_and_case_insensitive_lookup(directory):
    assert directory.verify_password("Alice@EXAMPLE.org", "alice-secret") == "alice@example.org"
    assert directory.verify_password("alice@example.org", "wrong") is None
    assert directory.verify_password("nobody@example.org", "alice-secret") is None
    assert directory.verify_password("not an address", "x") is None
    assert directory.user_exists("ALICE@example.ORG")


def test_set_password_replaces_the_old_one(directory):
    directory.set_password("alice@example.org", "new-secret")
    assert directory.verify_password("alice@example.org", "alice-secret") is None
    assert directory.verify_password("alice@example.org", "new-secret") == "alice@example.org"


def test_quota(directory):
    assert directory.quota("alice@example.org") == 1000
    assert directory.quota("bob@example.net") == 0
    directory.set_quota("bob@example.net", 5)
    assert directory.quota("BOB@example.net") == 5


def test_user_in_unknown_domain_is_refused(directory):
    with pytest.raises(DirectoryError, match="not a local domain"):
        directory.add_user("carol@elsewhere.com", "pw")


def test_duplicate_and_missing_users(directory):
    with pytest.raises(AlreadyExistsError):
        directory.add_user("ALICE@example.org", "x")
    with pytest.raises(NotFoundError):
        directory.delete_user("ghost@example.org")
    directory.delete_user("bob@example.net")
    assert not directory.user_exists("bob@example.net")
    assert directory.resolve("bob@example.net") is None


def test_bad_addresses_are_refused_with_a_reason(directory):
    for bad, reason in [("alice", "missing '@domain'"), ("@example.org", "empty local part"),
                        ("a b@example.org", "not allowed"), ("x@exa_mple.org", "label")]:
        with pytest.raises(DirectoryError, match=reason):
            directory.add_user(bad, "pw")


def test_resolve_user_unknown_and_remote(directory):
    assert directory.resolve("Alice@Example.org") == ["alice@example.org"]
    assert directory.resolve("nobody@example.org") is None
    assert directory.resolve("someone@gmail.example") == ["someone@gmail.example"]
    assert directory.is_local_domain("EXAMPLE.org")
    assert directory.is_local_domain("example.net")
    assert not directory.is_local_domain("gmail.example")


def test_alias_expands_recursively_to_local_and_remote(directory):
    directory.add_alias("team@example.org", ["sales@example.org", "bob@example.net"])
    directory.add_alias("sales@example.org", ["alice@example.org", "partner@remote.example"])
    assert sorted(directory.resolve("team@example.org")) == [
        "alice@example.org", "bob@example.net", "partner@remote.example",
    ]


def test_alias_loop_is_cut_and_does_not_hang(directory, caplog):
    directory.add_alias("a@example.org", ["b@example.org"])
    directory.add_alias("b@example.org", ["a@example.org", "alice@example.org"])
    with caplog.at_level(logging.WARNING, logger="appliance.auth"):
        assert directory.resolve("a@example.org") == ["alice@example.org"]
    assert "alias loop" in caplog.text


def test_pure_alias_loop_is_unknown_not_silently_dropped(directory):
    directory.add_alias("x@example.org", ["y@example.org"])
    directory.add_alias("y@example.org", ["x@example.org"])
    assert directory.resolve("x@example.org") is None


def test_alias_on_own_address_keeps_a_copy(directory):
    directory.add_alias("alice@example.org", ["alice@example.org", "alice@remote.example"])
    assert directory.resolve("alice@example.org") == ["alice@example.org", "alice@remote.example"]


def test_duplicates_removed(directory):
    directory.add_alias("all@example.org", ["alice@example.org", "x@example.org"])
    directory.add_alias("x@example.org", ["ALICE@example.org"])
    assert directory.resolve("all@example.org") == ["alice@example.org"]


def test_catch_all_only_for_unknown_local_parts(directory):
    directory.add_alias("@example.org", ["alice@example.org"])
    directory.add_alias("info@example.org", ["bob@example.net"])
    assert directory.resolve("anything@example.org") == ["alice@example.org"]
    assert directory.resolve("info@example.org") == ["bob@example.net"]
    assert directory.resolve("nobody@example.net") is None
    directory.delete_alias("@example.org")
    assert directory.resolve("anything@example.org") is None


def test_catch_all_to_catch_all_loop(directory):
    directory.set_catch_all("example.org", "x@example.net")
    directory.set_catch_all("example.net", "y@example.org")
    assert directory.resolve("q@example.org") is None


def test_delete_single_alias_target(directory):
    directory.add_alias("team@example.org", ["alice@example.org", "bob@example.net"])
    directory.delete_alias("team@example.org", ["bob@example.net"])
    assert directory.resolve("team@example.org") == ["alice@example.org"]
    with pytest.raises(NotFoundError, match="no target"):
        directory.delete_alias("team@example.org", ["nobody@example.net"])


def test_domain_delete_refused_while_in_use(directory):
    with pytest.raises(DirectoryError, match="still has 1 user"):
        directory.delete_domain("example.net")
    directory.delete_user("bob@example.net")
    directory.delete_domain("example.net")
    assert not directory.is_local_domain("example.net")


def test_config_entries_merge_and_are_read_only(make_directory, fast_hasher, config_user):
    config_hash = fast_hasher.hash("carol-pw")
    d = make_directory(
        config_domains=["example.org"],
        config_users=[config_user("carol@example.org", config_hash, 42), config_user("noreply@example.org", None)],
        config_aliases={"postmaster@example.org": ["carol@example.org"]},
        config_catch_all={"example.org": "carol@example.org"},
    )
    d.add_user("dave@example.org", "dave-pw")
    assert d.verify_password("carol@example.org", "carol-pw") == "carol@example.org"
    assert d.verify_password("noreply@example.org", "") is None
    assert d.quota("carol@example.org") == 42
    assert d.resolve("postmaster@example.org") == ["carol@example.org"]
    assert d.resolve("random@example.org") == ["carol@example.org"]
    assert d.resolve("dave@example.org") == ["dave@example.org"]
    sources = {u.address: (u.source, u.can_login) for u in d.list_users()}
    assert sources == {"carol@example.org": ("config", True), "noreply@example.org": ("config", False),
                       "dave@example.org": ("directory", True)}
    for action in (lambda: d.delete_user("carol@example.org"),
                   lambda: d.set_password("carol@example.org", "x"),
                   lambda: d.delete_alias("postmaster@example.org"),
                   lambda: d.add_alias("postmaster@example.org", ["dave@example.org"]),
                   lambda: d.delete_alias("@example.org"),
                   lambda: d.delete_domain("example.org")):
        with pytest.raises(ReadOnlyEntryError, match="config file"):
            action()
    with pytest.raises(AlreadyExistsError, match="config file"):
        d.add_user("Carol@example.org", "x")


def test_changes_from_another_process_are_seen_at_the_next_lookup(directory, tmp_path):
    assert directory.resolve("eve@example.net") is None
    script = (
        "import sys; from appliance.auth.directory import Directory; "
        "d = Directory(sys.argv[1]); d.add_user('eve@example.net', 'eve-pw'); "
        "d.add_alias('sales@example.net', ['eve@example.net'])"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "directory.sqlite")], check=True)
    assert directory.resolve("eve@example.net") == ["eve@example.net"]
    assert directory.resolve("sales@example.net") == ["eve@example.net"]
    assert directory.verify_password("eve@example.net", "eve-pw") == "eve@example.net"


def test_domains_and_quotas_changed_elsewhere_are_seen_at_the_next_lookup(directory, tmp_path):
    # Asked twice first: the second answer comes from the lookup cache, which the change must empty.
    for _ in range(2):
        assert not directory.is_local_domain("new.test")
        assert directory.quota("bob@example.net") == 0
    script = (
        "import sys; from appliance.auth.directory import Directory; "
        "d = Directory(sys.argv[1]); d.add_domain('new.test'); d.set_quota('bob@example.net', 5000)"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "directory.sqlite")], check=True)
    assert directory.is_local_domain("new.test")
    assert directory.quota("bob@example.net") == 5000


def test_list_aliases_shows_catch_all(directory):
    directory.add_alias("team@example.org", ["bob@example.net", "alice@example.org"])
    directory.add_alias("@example.net", ["bob@example.net"])
    listed = {a.address: a.targets for a in directory.list_aliases()}
    assert listed == {"team@example.org": ("alice@example.org", "bob@example.net"),
                      "@example.net": ("bob@example.net",)}


@pytest.mark.parametrize("variant", [argon2.Type.ID, argon2.Type.I])
@hypothesis.settings(max_examples=15, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(password=st.text(min_size=1, max_size=40), other=st.text(min_size=1, max_size=40))
def test_a_stored_hash_accepts_its_password_and_nothing_else_whichever_library_checks_it(
        make_directory, config_user, variant, password, other):
    # argon2id hashes are checked by libsodium, argon2i by argon2-cffi: both must agree with the hash argon2-cffi
    # wrote, for any text (non-ASCII included).
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=2, type=variant)
    stored = hasher.hash(password)
    d = make_directory(config_domains=["example.org"], config_users=[config_user("carol@example.org", stored)])
    assert d.verify_password("carol@example.org", password) == "carol@example.org"
    if other != password:
        assert d.verify_password("carol@example.org", other) is None


def test_a_mangled_argon2id_hash_refuses_the_login_and_says_why(make_directory, config_user, caplog):
    d = make_directory(config_domains=["example.org"],
                       config_users=[config_user("carol@example.org", "$argon2id$v=19$junk")])
    with caplog.at_level(logging.ERROR, logger="appliance.auth"):
        assert d.verify_password("carol@example.org", "anything") is None
    assert "stored password hash is not a valid argon2 hash" in caplog.text
