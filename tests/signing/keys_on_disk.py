"""Signing keys for tests, written in the layout of appliance/signing/keys.py (the key CLI is not needed), and
the TXT records (RFC 6376 §3.6.1, RFC 8463 §4.2) that publish them."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


@dataclass(frozen=True)
class TestKey:
    domain: str
    selector: str
    algorithm: str
    public_b64: str

    @property
    def record(self) -> str:
        """The key's record, as a zone line with its absolute name."""
        kind = "rsa" if self.algorithm == "rsa-sha256" else "ed25519"
        value = f"v=DKIM1; k={kind}; p={self.public_b64}"
        chunks = " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250))
        return f"{self.selector}._domainkey.{self.domain}. IN TXT {chunks}"


def write_keys(root: Path, domain: str, selectors: dict[str, str] | None = None,
               state: str = "active") -> list[TestKey]:
    """Keys for ``domain`` ({selector: algorithm}; default an RSA 2048 and an Ed25519 one), all in ``state``."""
    selectors = selectors or {"rsa1": "rsa-sha256", "ed1": "ed25519-sha256"}
    folder = root / domain
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for selector, algorithm in selectors.items():
        private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        if algorithm == "rsa-sha256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = private.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            private = ed25519.Ed25519PrivateKey.generate()
            public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        path = folder / f"{selector}.pem"
        path.write_bytes(pem)
        os.chmod(path, 0o600)
        made.append(TestKey(domain, selector, algorithm, base64.b64encode(public).decode()))
    entries = [{"selector": k.selector, "algorithm": k.algorithm, "state": state} for k in made]
    (folder / "keys.json").write_text(json.dumps({"keys": entries}))
    return made


def zone_records(keys: list[TestKey]) -> str:
    return "\n".join(k.record for k in keys) + "\n"
