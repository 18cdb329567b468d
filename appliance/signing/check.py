"""The signing checks of the pipeline (DATA stage, registered last, so that every header this host adds to the
message is there when it is signed).

- DKIM: mail from a trusted origin (an authenticated submission user, a client in
  outgoing_gateway.relay_networks) gets a signature per active key of its From domain (DMARC alignment, RFC 7489
  §3.1); mail from anyone else is never signed, whatever its From says.
- ARC: a message with a forwarded recipient (a forwarded domain of an incoming gateway, a primary's alias to an
  outside address) is sealed with the Authentication-Results sender_auth added (RFC 8617 §5.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from appliance.config import Config
from appliance.pipeline.stages import Client, Pipeline, Result, Stage, Transaction, note

from .arc import ArcSealer
from .keys import KeyStore, KeyStoreError
from .signer import NotSignable, Signer

log = logging.getLogger("appliance.signing")
INLINE_SIGN = 256 * 1024  # larger messages are canonicalised and hashed in a worker thread


def register(pipeline: Pipeline, config: Config, signer: Signer | None = None) -> Signer | None:
    """Register the ARC seal and the DKIM signature where the config asks for them (dkim.enabled); None, and
    nothing registered, when it is off."""
    if not config.dkim.enabled:
        return None
    signer = signer or Signer(KeyStore(config.dkim_dir), config.dkim.headers)
    if config.dkim.arc_seal and (config.forward_domains or config.primary is not None):
        pipeline.register(Stage.DATA, SealForwarded(ArcSealer(signer, arc_domains(config),
                                                              config.sender_auth.authserv_id or config.hostname),
                                                    config))
    pipeline.register(Stage.DATA, SignOutgoing(signer, config))
    return signer


def arc_domains(config: Config) -> tuple[str, ...]:
    """The domains whose key may seal, in order: dkim.arc_domain alone, or primary's then forwarded domains."""
    if config.dkim.arc_domain:
        return (config.dkim.arc_domain,)
    primary = config.primary.domains if config.primary is not None else ()
    return tuple(dict.fromkeys((*primary, *config.forward_domains)))


def _with_added(transaction: Transaction) -> bytes:
    """The message as it will leave: the headers earlier checks added (at the top), then the content."""
    if not transaction.added_headers:
        return transaction.content
    out = []
    for name, value in transaction.added_headers:  # folded as smtp/server.py writes them (RFC 5322 §2.2.3)
        lines = (line.strip() for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        out.append(f"{name}: " + "\r\n\t".join(line for line in lines if line) + "\r\n")
    return "".join(out).encode("utf-8", "replace") + transaction.content


def _fields(signatures: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for field in signatures:
        name, _, value = field.decode("ascii").partition(":")
        out.append((name, value.strip()))
    return out


class SignOutgoing:
    """DATA: the DKIM signatures of mail from a trusted origin, as headers of the check's result."""

    def __init__(self, signer: Signer, config: Config) -> None:
        self.signer = signer
        self._gateway = config.outgoing_gateway

    def trusted(self, client: Client) -> bool:
        return client.login is not None or (self._gateway is not None and self._gateway.allows(client.ip))

    def __call__(self, client: Client, transaction: Transaction, content: bytes) -> Result | None | Awaitable[
            Result | None]:
        if not self.trusted(client):
            return None
        message = _with_added(transaction)
        if len(message) > INLINE_SIGN:
            return self._in_thread(client, transaction, message)
        return self._sign(client, transaction, message)

    async def _in_thread(self, client: Client, transaction: Transaction, message: bytes) -> Result | None:
        return await asyncio.to_thread(self._sign, client, transaction, message)

    def _sign(self, client: Client, transaction: Transaction, message: bytes) -> Result | None:
        try:
            signatures = self.signer.signatures(message)
        except (NotSignable, KeyStoreError, ValueError) as exc:
            log.info("client=%s from=<%s> not DKIM-signed: %s", client.ip, transaction.mail_from, exc)
            return None
        if not signatures:
            log.debug("client=%s from=<%s> not DKIM-signed: no active key for the From domain", client.ip,
                      transaction.mail_from)
            return None
        return note(headers=_fields(signatures))


class SealForwarded:
    """DATA: the ARC set of a message with a forwarded recipient."""

    def __init__(self, sealer: ArcSealer, config: Config) -> None:
        self.sealer = sealer
        self._forward = frozenset(config.forward_domains)
        self._local = config.local_domains

    def forwarded(self, transaction: Transaction) -> bool:
        """A recipient of a forwarded domain, or a local address whose alias leads outside the fleet's domains."""
        for original, targets in transaction.accepted:
            domain = original.rpartition("@")[2].lower()
            if domain in self._forward:
                return True
            if domain in self._local and any(t.rpartition("@")[2].lower() not in self._local for t in targets):
                return True
        return False

    def __call__(self, client: Client, transaction: Transaction, content: bytes) -> Awaitable[Result | None] | None:
        if not self.forwarded(transaction):
            return None
        return self._seal(transaction)

    async def _seal(self, transaction: Transaction) -> Result | None:
        fields = await asyncio.to_thread(self.sealer.seal, _with_added(transaction))
        return note(headers=fields) if fields else None
