"""Submission: an authenticated user sends only as itself or as an alias that delivers to it (MAIL FROM)."""

from __future__ import annotations

from typing import Protocol

from appliance.pipeline.stages import Client, MailFrom, Result, Transaction, refuse


class AliasResolver(Protocol):
    def resolve(self, address: str) -> list[str] | None: ...


class SenderOwnership:
    def __init__(self, directory: AliasResolver | None) -> None:
        self.directory = directory

    def __call__(self, client: Client, transaction: Transaction, sender: MailFrom) -> Result | None:
        login = client.login
        if login is None or not sender.address or self.owns(login, sender.address):
            return None
        return refuse(f"553 5.7.1 <{sender.address}> is not an address of the authenticated user {login}")

    def owns(self, login: str, sender: str) -> bool:
        if sender.lower() == login.lower():
            return True
        targets = self.directory.resolve(sender) if self.directory is not None else None
        return targets is not None and login.lower() in (t.lower() for t in targets)
