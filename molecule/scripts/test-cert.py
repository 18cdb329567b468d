#!/usr/bin/env python3
"""Print a test certificate or key for a host name, made once per scenario run and then reused.

  test-cert.py cert|key HOSTNAME   (files kept in $MOLECULE_EPHEMERAL_DIRECTORY/tls, so reruns are idempotent)
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make(name: str, folder: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main() -> int:
    kind, name = sys.argv[1], sys.argv[2]
    folder = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ".")) / "tls"
    if not (folder / f"{name}.crt").exists():
        make(name, folder)
    sys.stdout.write((folder / f"{name}.{'crt' if kind == 'cert' else 'key'}").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
