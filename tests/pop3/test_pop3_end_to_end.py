"""The whole primary path as an administrator sees it: `mailfleet serve` in its own process, users added
with the CLI while it runs, mail in by SMTP, out by POP3 (poplib over STLS and POP3S), bans."""

from __future__ import annotations

import poplib
import smtplib
import ssl

import pytest

PASSWORD = "pop3 end to end"


@pytest.fixture
def primary(mailfleet_factory):
    server = mailfleet_factory(
        {"roles": ["primary"], "primary": {"domains": ["example.org"]},
         "tls": {"plaintext_auth_on_loopback": False}},
        services=("smtp", "pop3", "pop3s"), name="pop3e2e",
    )
    added = server.cli("user", "add", "alice@example.org", "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert server.cli("alias", "add", "sales@example.org", "alice@example.org").returncode == 0
    return server


def tls_context(server) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "selfsigned.crt"))
    context.check_hostname = False  # the self-signed certificate names the configured hostname, we dial an IP
    return context


def test_mail_to_an_alias_added_at_runtime_is_fetched_over_stls(primary):
    with smtplib.SMTP("127.0.0.1", primary.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("bob@remote.example", ["sales@example.org"],
                      b"From: bob@remote.example\r\nSubject: via alias\r\n\r\nhello\r\n.dot\r\n")
    primary.wait_for(lambda: len(primary.mailbox_files("alice@example.org")) == 1, what="local delivery")
    client = poplib.POP3("127.0.0.1", primary.ports["pop3"], timeout=30)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.user("alice@example.org")  # plaintext refused before STLS (config: no loopback exception)
    client.stls(tls_context(primary))
    client.user("alice@example.org")
    client.pass_(PASSWORD)
    lines = client.retr(1)[1]
    assert b"Subject: via alias" in lines and b".dot" in lines and b"hello" in lines
    client.dele(1)
    client.quit()
    assert primary.mailbox_files("alice@example.org") == []


def test_repeated_failures_ban_the_client(primary):
    context = tls_context(primary)
    for _ in range(9):
        client = poplib.POP3_SSL("127.0.0.1", primary.ports["pop3s"], context=context, timeout=30)
        client.user("alice@example.org")
        with pytest.raises(poplib.error_proto, match="authentication failed"):
            client.pass_("guess")
        client.quit()
    client = poplib.POP3_SSL("127.0.0.1", primary.ports["pop3s"], context=context, timeout=30)
    client.user("alice@example.org")
    with pytest.raises(poplib.error_proto, match="too many failures"):
        client.pass_("tenth guess")
    with pytest.raises(poplib.error_proto, match="too many authentication failures"):
        poplib.POP3_SSL("127.0.0.1", primary.ports["pop3s"], context=context, timeout=30)
    primary.wait_for(lambda: "banning 127.0.0.1 for 3600s after 10 authentication failures" in primary.log(),
                     what="the ban in the server log")
    assert "guess" not in primary.log() and PASSWORD not in primary.log()
