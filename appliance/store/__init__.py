"""Mailbox store: Maildir files (written once, fsynced) plus per-account SQLite (WAL) metadata.

Public API (see ``MailStore`` for a usage sketch):

- ``MailStore(root)``: ``deliver(address, data, folder="INBOX", flags=(), internal_date=None) -> uid``,
  ``set_quota(address, bytes)``, ``quota(address)``, ``account(address) -> Account``, ``subscribe``.
- ``Account``: folders (``folders``, ``folder``, ``create_folder``, ``delete_folder``, ``rename_folder``,
  ``set_subscribed``, ``status``), messages (``messages(folder, uids=None)``, ``message``, ``read``,
  ``uids``, ``flag_list``, ``deliver``, ``store_flags``, ``expunge``, ``delete_messages``, ``copy``,
  ``move``, ``changed_since``, ``expunged_since``, ``recent_uids``, ``claim_recent``),
  ``exclusive_lock(name)`` and ``subscribe(callback)``. ``Account`` (``appliance.store.account``) is
  composed of its parts, one module each: ``database`` (the SQLite index, its transactions and locks, the
  quota), ``folders``, ``messages`` (and flags), ``staging`` (deliveries: ``Delivery``, ``stage``/``index``/
  ``settle``) and ``recovery`` (the schema and the repair at open).
- ``appliance.store.importing``: Maildir / mbox import used by ``mailfleet import``.

Folder names use "/" as hierarchy delimiter; missing parents are not created (IMAP lists them
\\Noselect). Message files never change once written, so a file path is a stable cache key.
- Errors: ``QuotaExceeded`` (``.permanent``), ``FolderNotFound``, ``FolderExists``, ``InvalidFolderName``,
  ``InvalidAddress``, ``MailboxLocked``, ``MessageNotFound``, all ``StoreError``.
"""

from appliance.store.account import Account
from appliance.store.database import DELIMITER
from appliance.store.errors import (
    FolderExists,
    FolderNotFound,
    InvalidAddress,
    InvalidFolderName,
    MailboxLocked,
    MessageNotFound,
    QuotaExceeded,
    StoreError,
)
from appliance.store.folders import DEFAULT_FOLDERS, FolderInfo, FolderStatus
from appliance.store.mailstore import MailStore, canonical_address
from appliance.store.messages import MessageInfo

__all__ = [
    "DEFAULT_FOLDERS",
    "DELIMITER",
    "Account",
    "FolderExists",
    "FolderInfo",
    "FolderNotFound",
    "FolderStatus",
    "InvalidAddress",
    "InvalidFolderName",
    "MailStore",
    "MailboxLocked",
    "MessageInfo",
    "MessageNotFound",
    "QuotaExceeded",
    "StoreError",
    "canonical_address",
]
