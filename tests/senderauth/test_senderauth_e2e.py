"""Sender authentication as a mail administrator meets it: a running Mailfleet (tests/peers/mailfleet.py) whose
resolver is a real BIND serving the senders' SPF, DKIM and DMARC records and the clients' reverse DNS, real
SMTP clients from several 127.0.35.x addresses, messages signed in the test by dkimpy, and the
Authentication-Results header read where the user finds the message."""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from peers.named import start_named

from appliance.senderauth.results import authserv_id

PASSWORD = "s3cret-Pass"
GOOD = "127.0.35.1"  # mail.sender.test, in sender.test's SPF record: iprev and SPF pass
STRANGER = "127.0.35.2"  # PTR stranger.elsewhere.test, which has no address: iprev fail, SPF fail
NOBODY = "127.0.35.3"  # no PTR record
GATEWAY = "127.0.35.9"  # the primary's trusted gateway
RELAYED = "127.0.35.8"  # in outgoing_gateway.relay_networks
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def _txt(text: str) -> str:
    """A TXT record's data in strings of at most 255 octets (RFC 1035 §3.3.14), as a 2048-bit key needs."""
    return " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))


def _rsa_public() -> str:
    der = RSA_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _ed_public() -> str:
    raw = ED_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


RSA_PEM = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
ED_PRIVATE = base64.b64encode(ED_KEY.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                   serialization.NoEncryption()))


def _zones() -> dict[str, str]:
    spf = f'@ IN TXT "v=spf1 ip4:{GOOD} -all"\n'
    return {
        "sender.test": spf + 'mail IN A 127.0.35.1\nmail IN TXT "v=spf1 a -all"\n'
                       f"rsa._domainkey IN TXT {_txt('v=DKIM1; k=rsa; p=' + _rsa_public())}\n"
                       f'ed._domainkey IN TXT "v=DKIM1; k=ed25519; p={_ed_public()}"\n'
                       '_dmarc IN TXT "v=DMARC1; p=reject"\n',
        "quarantine.test": spf + '_dmarc IN TXT "v=DMARC1; p=quarantine"\n',
        "nopolicy.test": "@ IN A 127.0.35.200\n",
        "elsewhere.test": "@ IN A 127.0.35.200\n",
        "35.0.127.in-addr.arpa": "1 IN PTR mail.sender.test.\n2 IN PTR stranger.elsewhere.test.\n",
    }


def _hash() -> str:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "hash-password", "--password-stdin"],
                          input=PASSWORD + "\n", capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def named(tmp_path: Path):
    server = start_named(tmp_path / "named", _zones())
    yield server
    server.stop()


def _primary(mailfleet_factory, named, sender_auth: dict | None = None, **more: object):
    return mailfleet_factory({
        "roles": more.pop("roles", ["primary"]),
        "dns": {"nameservers": [named.address], "port": named.port, "timeout": "2s"},
        "primary": {"domains": ["home.test", "lenient.test"],
                    "users": [{"address": "alice@home.test", "password_hash": _hash()},
                              {"address": "lee@lenient.test", "password_hash": _hash()}]},
        "filters": {"trusted_gateways": [f"{GATEWAY}/32"]},
        "sender_auth": {"enabled": True, **(sender_auth or {})},
        **more,
    }, services=("smtp", "submission"))


def _message(sender: str, subject: str, body: str = "Shall we meet on Tuesday?", extra: str = "") -> bytes:
    return (f"From: Bob <{sender}>\r\nTo: alice@home.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n{extra}\r\n{body}\r\n").encode()


def _signed(message: bytes, *, rsa_key: bool = True, ed: bool = False) -> bytes:
    """``message`` with a DKIM signature by the rsa key and, with ``ed``, one by the ed25519 key above it."""
    if rsa_key:
        message = dkim.sign(message, b"rsa", b"sender.test", RSA_PEM,
                            include_headers=[b"from", b"to", b"subject"]) + message
    if ed:
        message = dkim.sign(message, b"ed", b"sender.test", ED_PRIVATE, signature_algorithm=b"ed25519-sha256",
                            include_headers=[b"from", b"to", b"subject"]) + message
    return message


def _send(server, sender: str, data: bytes, source: str, rcpt: str = "alice@home.test",
          helo: str = "mail.sender.test") -> tuple[int, bytes]:
    """One transaction from ``source``: the reply to MAIL when it refused, else the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30, source_address=(source, 0)) as conn:
        conn.ehlo(helo)
        code, reply = conn.docmd("MAIL", f"FROM:<{sender}>")
        if code != 250:
            return code, reply
        code, reply = conn.docmd("RCPT", f"TO:<{rcpt}>")
        assert code == 250, reply
        return conn.data(data)


def _delivered(server, count: int, user: str = "alice@home.test", folder: str = "") -> list[bytes]:
    server.wait_for(lambda: len(server.mailbox_files(user, folder)) >= count, what=f"{count} in {folder or 'INBOX'}")
    return [path.read_bytes() for path in server.mailbox_files(user, folder)]


def _by_subject(messages: list[bytes], subject: str) -> bytes:
    [found] = [m for m in messages if f"Subject: {subject}\r\n".encode() in m]
    return found


def _results(message: bytes, own_id: str) -> list[str]:
    """Our Authentication-Results fields, unfolded."""
    head = re.sub(rb"\r\n[ \t]+", b" ", message.split(b"\r\n\r\n", 1)[0]).decode()
    return [line for line in head.split("\r\n") if line.lower().startswith("authentication-results:")
            and (authserv_id(line.split(":", 1)[1]) or "").lower() == own_id.lower()]


def _methods(result: str) -> list[str]:
    return [part.strip() for part in result.split(";")[1:]]


def test_results_of_pass_fail_and_none_are_in_the_header(mailfleet_factory, named) -> None:
    server = _primary(mailfleet_factory, named)
    own = server.config["hostname"]
    assert _send(server, "bob@sender.test", _signed(_message("bob@sender.test", "signed twice"), ed=True),
                 GOOD)[0] == 250
    tampered = _signed(_message("bob@sender.test", "tampered")).replace(b"Tuesday", b"Friday")
    assert _send(server, "bob@sender.test", tampered, GOOD)[0] == 250
    assert _send(server, "ann@nopolicy.test", _message("ann@nopolicy.test", "no policy"), NOBODY,
                 helo="[127.0.35.3]")[0] == 250
    messages = _delivered(server, 3)

    [signed] = _results(_by_subject(messages, "signed twice"), own)
    methods = _methods(signed)
    assert methods[0] == f"iprev=pass (mail.sender.test) policy.iprev={GOOD}"
    assert methods[1].startswith("spf=pass ") and methods[1].endswith("smtp.mailfrom=sender.test")
    assert methods[2].startswith("spf=pass ") and methods[2].endswith("smtp.helo=mail.sender.test")
    dkim_results = [m for m in methods if m.startswith("dkim=")]
    assert [m.split()[0] for m in dkim_results] == ["dkim=pass", "dkim=pass"]
    assert "header.d=sender.test header.s=ed header.b=" in dkim_results[0]  # the topmost signature first
    assert "header.d=sender.test header.s=rsa header.b=" in dkim_results[1]
    assert "dmarc=pass (p=reject dis=none) header.from=sender.test" in methods
    assert "arc=none" in methods

    [tampered_results] = _results(_by_subject(messages, "tampered"), own)
    assert 'dkim=fail reason="body hash did not verify" header.d=sender.test header.s=rsa' in tampered_results
    assert "dmarc=pass" in tampered_results  # SPF passed, aligned with the From domain

    [none] = _results(_by_subject(messages, "no policy"), own)
    methods = _methods(none)
    assert methods[0].startswith("iprev=fail ") and methods[0].endswith(f"policy.iprev={NOBODY}")
    assert methods[1].startswith("spf=none ") and methods[1].endswith("smtp.mailfrom=nopolicy.test")
    assert methods[2].startswith("spf=none ") and "smtp.helo" in methods[2]  # an address literal: no SPF
    assert not any(m.startswith("dkim=") for m in methods)
    assert "dmarc=none header.from=nopolicy.test" in methods


def test_dmarc_reject_is_refused_quarantine_goes_to_junk_and_a_domain_can_say_otherwise(mailfleet_factory,
                                                                                          named) -> None:
    server = _primary(mailfleet_factory, named, {"domains": {"lenient.test": {"dmarc_reject": "junk"}}})
    own = server.config["hostname"]
    code, reply = _send(server, "bob@sender.test", _message("bob@sender.test", "forged"), STRANGER,
                        helo="stranger.elsewhere.test")
    assert code == 550 and reply.startswith(b"5.7.1 ") and b"sender.test" in reply and b"DMARC" in reply
    code, _ = _send(server, "eve@quarantine.test", _message("eve@quarantine.test", "quarantined"), STRANGER)
    assert code == 250
    code, _ = _send(server, "bob@sender.test", _message("bob@sender.test", "lenient"), STRANGER,
                    rcpt="lee@lenient.test")
    assert code == 250

    [junk] = _delivered(server, 1, folder="Junk")
    [results] = _results(junk, own)
    assert "dmarc=fail (p=quarantine dis=quarantine) reason=" in results and "header.from=quarantine.test" in results
    assert "iprev=fail" in results and "spf=fail" in results
    [lenient] = _delivered(server, 1, user="lee@lenient.test", folder="Junk")
    assert "dmarc=fail (p=reject dis=reject) reason=" in _results(lenient, own)[0]
    assert server.mailbox_files("alice@home.test") == []  # nothing of the forged mail reached the INBOX


def test_forged_results_are_removed_and_a_trusted_gateways_kept(mailfleet_factory, named) -> None:
    server = _primary(mailfleet_factory, named)
    own = server.config["hostname"]
    forged = (f"Authentication-Results: {own}; dkim=pass header.d=sender.test\r\n"
              f"Authentication-Results: (a comment) \"{own.upper()}\";\r\n\tdmarc=pass header.from=sender.test\r\n"
              "Authentication-Results: other.example; spf=pass\r\n")
    assert _send(server, "ann@nopolicy.test", _message("ann@nopolicy.test", "forged results", extra=forged),
                 NOBODY)[0] == 250
    assert _send(server, "ann@nopolicy.test", _message("ann@nopolicy.test", "via gateway", extra=forged),
                 GATEWAY)[0] == 250
    messages = _delivered(server, 2)

    outside = _by_subject(messages, "forged results")
    [ours] = _results(outside, own)
    assert "dkim=pass" not in ours and "dmarc=none header.from=nopolicy.test" in ours
    assert b"Authentication-Results: other.example; spf=pass\r\n" in outside  # not ours to judge

    gateway = _by_subject(messages, "via gateway")
    kept = _results(gateway, own)
    assert len(kept) == 2 and "dkim=pass header.d=sender.test" in kept[0]  # the gateway's, and none added

    # The gateway found a p=quarantine failure, which it cannot file into Junk: the primary does.
    verdict = (f"Authentication-Results: {own};\r\n\tspf=fail smtp.mailfrom=quarantine.test;\r\n"
               '\tdmarc=fail (p=quarantine dis=quarantine) reason="no aligned SPF or DKIM pass"'
               " header.from=quarantine.test\r\n")
    assert _send(server, "eve@quarantine.test", _message("eve@quarantine.test", "gateway junk", extra=verdict),
                 GATEWAY)[0] == 250
    [junk] = _delivered(server, 1, folder="Junk")
    assert b"Subject: gateway junk" in junk and len(_results(junk, own)) == 1


def test_forged_results_are_removed_with_sender_auth_off(mailfleet_factory, named) -> None:
    server = _primary(mailfleet_factory, named, {"enabled": False, "authserv_id": "mx.home.test"})
    extra = "Authentication-Results: mx.home.test; dmarc=pass header.from=sender.test\r\n"
    assert _send(server, "bob@sender.test", _message("bob@sender.test", "off", extra=extra), STRANGER)[0] == 250
    [message] = _delivered(server, 1)
    assert b"Authentication-Results" not in message


def test_a_local_sender_from_outside_is_refused_and_ours_are_not(mailfleet_factory, named) -> None:
    server = _primary(mailfleet_factory, named, roles=["primary", "outgoing_gateway"],
                      outgoing_gateway={"relay_networks": [f"{RELAYED}/32"]})
    own = server.config["hostname"]
    code, reply = _send(server, "alice@home.test", _message("alice@home.test", "spoofed"), STRANGER)
    assert code == 550 and reply.startswith(b"5.7.1 <alice@home.test>")
    extra = f"Authentication-Results: {own}; dmarc=pass header.from=home.test\r\n"
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30, source_address=(STRANGER, 0)) as conn:
        conn.login("lee@lenient.test", PASSWORD)
        conn.sendmail("lee@lenient.test", ["alice@home.test"], _message("lee@lenient.test", "mine", extra=extra))
    [message] = _delivered(server, 1)
    assert b"Subject: mine" in message and b"Authentication-Results" not in message
    # A host of relay_networks (the fleet's own) sends as a local user: not refused, not judged, forgery removed.
    assert _send(server, "alice@home.test", _message("alice@home.test", "relayed", extra=extra), RELAYED)[0] == 250
    relayed = _by_subject(_delivered(server, 2), "relayed")
    assert b"Authentication-Results" not in relayed


def test_arc_chain_is_verified(mailfleet_factory, named) -> None:
    server = _primary(mailfleet_factory, named)
    own = server.config["hostname"]
    relayed = b"Authentication-Results: list.sender.test; dkim=pass header.d=sender.test\r\n" + _message(
        "bob@sender.test", "through a list")
    sealed = b"".join(dkim.arc_sign(relayed, b"rsa", b"sender.test", RSA_PEM, b"list.sender.test")) + relayed
    assert _send(server, "bob@sender.test", sealed, GOOD)[0] == 250
    [message] = _delivered(server, 1)
    assert "arc=pass (i=1)" in _methods(_results(message, own)[0])


def test_dns_failure_is_temperror_and_never_refuses(mailfleet_factory, named) -> None:
    server = _primary(mailfleet_factory, named)
    own = server.config["hostname"]
    named.stop()
    code, _ = _send(server, "bob@sender.test", _signed(_message("bob@sender.test", "no dns")), STRANGER)
    assert code == 250
    [message] = _delivered(server, 1)
    methods = _methods(_results(message, own)[0])
    assert [m.split()[0] for m in methods] == ["iprev=temperror", "spf=temperror", "spf=temperror",
                                               "dkim=temperror", "dmarc=temperror", "arc=none"]
