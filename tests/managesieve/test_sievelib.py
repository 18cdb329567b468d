"""ManageSieve with sievelib's client (what Roundcube's plugin does, in Python) against `mailfleet serve`."""

from __future__ import annotations

import imaplib

import pytest
from sievelib.managesieve import Client

from tests.managesieve.conftest import ADDRESS, BAD, GOOD, PASSWORD, certificate, scripts_folder

# on loopback the service allows plaintext logins (tls.plaintext_auth_on_loopback); sievelib warns of them
pytestmark = pytest.mark.filterwarnings("ignore:Credentials are sent over an unencrypted connection")


def client(server, user: str, **connect) -> Client:
    sieve = Client(ADDRESS, server.ports["managesieve"], srvhostname=server.config["hostname"])
    assert sieve.connect(user, PASSWORD, **connect), sieve.errmsg
    return sieve


def test_upload_list_activate_get_rename_delete(loopback_server, user) -> None:
    server = loopback_server
    sieve = client(server, user, authmech="PLAIN")
    assert sieve.get_implementation() == "Mailfleet"
    assert "fileinto" in sieve.get_sieve_capabilities()
    assert sieve.listscripts() == (None, [])
    assert sieve.havespace("filters", len(GOOD))
    assert sieve.putscript("filters", GOOD)
    assert sieve.putscript("vacation rules", GOOD)
    assert sieve.setactive("filters")
    assert sieve.listscripts() == ("filters", ["vacation rules"])
    assert sieve.getscript("filters") == GOOD.replace("\r\n", "\n").rstrip("\n")
    # what local delivery reads: the active script's name and its octets, on disk
    folder = scripts_folder(server, user)
    assert (folder / "active").read_text() == "filters"
    assert (folder / "filters.sieve").read_bytes() == GOOD.encode()

    assert sieve.renamescript("filters", "main")  # the active script stays active under its new name
    assert sieve.listscripts() == ("main", ["vacation rules"])
    assert not sieve.renamescript("main", "vacation rules")
    assert sieve.errcode == b"ALREADYEXISTS"
    assert not sieve.deletescript("main")
    assert sieve.errcode == b"ACTIVE"
    assert sieve.getscript("nonesuch") is None and sieve.errcode == b"NONEXISTENT"
    assert not sieve.setactive("nonesuch") and sieve.errcode == b"NONEXISTENT"
    assert sieve.setactive("")  # RFC 5804 §2.8: no active script
    assert sieve.deletescript("main")
    assert sieve.listscripts() == (None, ["vacation rules"])
    sieve.logout()


def test_a_bad_script_is_refused_with_its_line_and_not_stored(loopback_server, user) -> None:
    sieve = client(loopback_server, user, authmech="LOGIN")
    assert sieve.checkscript(GOOD)
    assert not sieve.checkscript(BAD)
    assert sieve.errmsg.startswith(b"line ")
    assert not sieve.putscript("broken", BAD)
    assert sieve.errmsg.startswith(b"line ")
    assert sieve.listscripts() == (None, [])
    sieve.logout()


def test_quota_limits(loopback_server, user) -> None:
    sieve = client(loopback_server, user)  # sieve.max_scripts 3, sieve.max_script_size 2048
    big = GOOD + "#" * 2048 + "\r\n"
    assert not sieve.havespace("big", len(big.encode())) and sieve.errcode == b"QUOTA/MAXSIZE"
    assert not sieve.putscript("big", big) and sieve.errcode == b"QUOTA/MAXSIZE"
    for name in ("one", "two", "three"):
        assert sieve.putscript(name, GOOD)
    assert not sieve.putscript("four", GOOD) and sieve.errcode == b"QUOTA/MAXSCRIPTS"
    assert not sieve.havespace("four", 10) and sieve.errcode == b"QUOTA/MAXSCRIPTS"
    assert sieve.putscript("three", GOOD + "keep;\r\n")  # replacing one is within the count
    assert sieve.listscripts() == (None, ["one", "three", "two"])
    sieve.logout()


def test_plaintext_auth_only_after_starttls(strict_server, user, monkeypatch) -> None:
    plain = Client(ADDRESS, strict_server.ports["managesieve"])
    with pytest.warns(UserWarning, match="unencrypted"):
        assert not plain.connect(user, PASSWORD)  # no mechanism offered before TLS
    assert plain.errmsg == b"No suitable mechanism found"
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate(strict_server)))
    sieve = client(strict_server, user, starttls=True)
    assert sieve.putscript("filters", GOOD)
    assert sieve.listscripts() == (None, ["filters"])
    sieve.logout()


def test_failed_logins_ban_the_client_for_imap_too(sieve_servers, user) -> None:
    server = sieve_servers.get("bans", tls={"plaintext_auth_on_loopback": True}, auth={"ban_threshold": 3})
    for _ in range(3):
        sieve = Client(ADDRESS, server.ports["managesieve"])
        assert not sieve.connect(user, "guess")
        assert sieve.errmsg == b"Authentication failed."
    banned = Client(ADDRESS, server.ports["managesieve"])
    with pytest.raises(Exception, match="closed by server"):  # BYE before the capabilities
        banned.connect(user, PASSWORD)
    with pytest.raises(imaplib.IMAP4.error, match="authentication failures"):  # one ban store for all protocols
        imaplib.IMAP4(ADDRESS, server.ports["imap"], timeout=30)


def test_a_reload_applies_new_limits_to_the_next_connection(sieve_servers, user) -> None:
    server = sieve_servers.get("reload", tls={"plaintext_auth_on_loopback": True})
    before = client(server, user)
    assert before.putscript("one", GOOD)
    before.logout()
    config = dict(server.config)
    config["sieve"] = {"max_script_size": 2048, "max_scripts": 1}
    since = server.log_mark()
    server.reload(config)
    server.wait_for_log("config reloaded", since=since)
    after = client(server, user)
    assert not after.putscript("two", GOOD) and after.errcode == b"QUOTA/MAXSCRIPTS"
    assert after.putscript("one", GOOD + "keep;\r\n")
    after.logout()
