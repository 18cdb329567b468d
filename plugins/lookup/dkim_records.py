"""Lookup mailfleet.fleet.dkim_records: the DKIM TXT record text of each private key kept on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
name: dkim_records
short_description: The DKIM key records (v=DKIM1; k=...; p=...) of private keys kept on the controller
description:
  - Each term is a dict C({domain, selector, file}); the result is the same dict with C(record), the text of
    the TXT record C(<selector>._domainkey.<domain>) (RFC 6376 section 3.6.1, RFC 8463 section 4.2).
  - The key files are read like the C(file) lookup reads them; a file encrypted with ansible-vault is decrypted, so
    the keys may be kept vaulted.
  - A term whose file does not exist yet (in check mode before the first run made it) is left out, with a warning.
options:
  _terms:
    description: The keys, as dicts with domain, selector and file.
    type: list
    elements: dict
    required: true
author: Mailfleet
"""

import base64
import os
from typing import Any

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible.utils.display import Display

display = Display()


def dkim_record_text(private_pem: bytes) -> str:
    """The public half of a PKCS#8 private key as a DKIM key record: RSA as its SubjectPublicKeyInfo in base64
    (RFC 6376 §3.6.1), Ed25519 as the raw 32-octet key in base64 (RFC 8463 §4.2)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = serialization.load_pem_private_key(private_pem, password=None)
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raise ValueError(f"a {type(public).__name__} is no DKIM key (RSA or Ed25519)")


class LookupModule(LookupBase):
    """query('mailfleet.fleet.dkim_records', keys) -> the keys that exist, each with its record."""

    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        found = []
        for term in terms:
            if not isinstance(term, dict) or not {"domain", "selector", "file"} <= set(term):
                raise AnsibleLookupError(f"dkim_records: {term!r} is not a dict with domain, selector and file")
            path = os.path.expanduser(str(term["file"]))
            if not os.path.exists(path):
                display.warning(f"dkim_records: {path} does not exist yet; its record is left out")
                continue
            try:
                text = self._loader.get_text_file_contents(path)
                record = dkim_record_text(text.encode())
            except (OSError, ValueError, TypeError) as exc:
                raise AnsibleLookupError(f"dkim_records: {path}: not a readable private key: {exc}") from exc
            found.append({**term, "record": record})
        return found
