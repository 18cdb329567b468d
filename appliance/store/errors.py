"""Errors raised by the mailbox store; protocol layers map them to replies."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class QuotaExceeded(StoreError):
    """The delivery would take the account over its quota.

    ``permanent`` is True when the message alone is larger than the whole quota (it can never fit:
    SMTP answers 552 5.2.2); otherwise the mailbox is merely full for now (452 4.2.2).
    """

    def __init__(self, address: str, used: int, quota: int, size: int) -> None:
        self.address = address
        self.used = used
        self.quota = quota
        self.size = size
        self.permanent = size > quota
        super().__init__(f"{address}: quota exceeded ({used} + {size} > {quota} bytes)")


class InvalidAddress(StoreError):
    """The address cannot name a mailbox directory (empty part, slash, dot-dot, ...)."""


class FolderNotFound(StoreError):
    """The named folder does not exist."""


class FolderExists(StoreError):
    """CREATE or RENAME onto a folder that already exists."""


class InvalidFolderName(StoreError):
    """The folder name is empty, malformed or reserved."""


class MailboxLocked(StoreError):
    """An exclusive lock (for example POP3's maildrop lock, RFC 1939 §8) is held by another session."""


class MessageNotFound(StoreError):
    """The UID does not (or no longer) exist in the folder."""
