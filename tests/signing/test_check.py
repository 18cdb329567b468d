"""The DATA check's answers: who is signed, and a 4xx (never unsigned mail) when a signing domain's keys cannot
be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import parse_config
from appliance.pipeline.stages import Action
from appliance.signing.check import SignOutgoing
from appliance.signing.keys import KeyStore
from appliance.signing.signer import Signer

from .keys_on_disk import write_keys

CONFIG = parse_config("hostname: gw.example.org\nroles: [outgoing_gateway]\n"
                      "outgoing_gateway: {relay_networks: [127.0.41.8/32]}\ndkim: {enabled: true}\n",
                      check_host=False)
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"


@dataclass
class _Client:
    ip: str
    login: str | None = None
    host_name: str | None = None
    verdicts: dict = field(default_factory=dict)


@dataclass
class _Transaction:
    content: bytes
    mail_from: str = "alice@example.org"
    added_headers: list = field(default_factory=list)


def test_trusted_origins_are_signed_and_others_not(tmp_path: Path) -> None:
    write_keys(tmp_path, "example.org")
    check = SignOutgoing(Signer(KeyStore(tmp_path)), CONFIG)
    for client in (_Client("127.0.41.8"), _Client("127.0.41.99", login="alice@example.org")):
        result = check(client, _Transaction(MESSAGE), MESSAGE)
        assert result is not None and [name for name, _ in result.headers] == ["DKIM-Signature"] * 2
    assert check(_Client("127.0.41.99"), _Transaction(MESSAGE), MESSAGE) is None


def test_unreadable_keys_are_a_temporary_failure(tmp_path: Path) -> None:
    write_keys(tmp_path, "example.org")
    (tmp_path / "example.org" / "rsa1.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n")
    check = SignOutgoing(Signer(KeyStore(tmp_path)), CONFIG)
    result = check(_Client("127.0.41.8"), _Transaction(MESSAGE), MESSAGE)
    assert result is not None and result.action is Action.TEMPFAIL and result.reply.startswith("451 4.3.0")
    assert Signer(KeyStore(tmp_path)).sign(MESSAGE) == MESSAGE  # a DSN still goes out, unsigned


def test_a_sealing_library_failure_leaves_the_message_unsealed_and_logs_it(tmp_path: Path, monkeypatch,
                                                                            caplog) -> None:
    # dkimpy's arc_sign imports authres only when it seals; a missing or broken piece there raises whatever it
    # raises. A seal adds to a message, so the gateway delivers it unsealed rather than answering 451 forever.
    import dkim

    from appliance.signing.arc import ArcSealer

    write_keys(tmp_path, "example.org")
    sealer = ArcSealer(Signer(KeyStore(tmp_path)), ["example.org"], "gw.example.org")

    def broken(*args, **kwargs):
        raise NameError("name 'authres' is not defined")

    monkeypatch.setattr(dkim, "arc_sign", broken)
    message = b"Authentication-Results: gw.example.org; spf=pass\r\n" + MESSAGE
    assert sealer.seal(message) == []
    assert "not ARC-sealed: NameError: name 'authres' is not defined" in caplog.text
