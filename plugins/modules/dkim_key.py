#!/usr/bin/python
"""Ansible module mailfleet.fleet.dkim_key: make a DKIM private key on the controller once, never replace it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: dkim_key
short_description: Make a DKIM signing key (RSA 2048 or Ed25519) once, as a PKCS#8 PEM file of mode 0600
description:
  - Creates O(path) with a new private key when it does not exist; an existing file (plain PEM, or encrypted
    with ansible-vault) is left exactly as it is, so a key is made once and then only read.
  - The key is written to a temporary file in the same folder, flushed to disk and renamed, so that an
    interrupted run never leaves a half-written key behind.
  - Runs where the keys are kept, normally the controller (C(delegate_to=localhost)); it needs the
    Python C(cryptography) package, which Ansible itself depends on.
options:
  path:
    description: The key file. Its folder is created with mode 0700 when missing.
    type: path
    required: true
  algorithm:
    description: C(rsa) makes RSA 2048 for rsa-sha256 (RFC 6376), C(ed25519) an Ed25519 key for ed25519-sha256 (RFC 8463).
    type: str
    choices: [rsa, ed25519]
    required: true
author: Mailfleet
"""

EXAMPLES = r"""
- name: Make the RSA key of example.org once
  mailfleet.fleet.dkim_key:
    path: ~/.local/share/mailfleet/dkim/example.org/mf-rsa.pem
    algorithm: rsa
  delegate_to: localhost
"""

RETURN = r"""
path:
  description: The key file.
  type: str
  returned: always
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
except ImportError:  # pragma: no cover - Ansible's own dependency; reported by the module when missing
    serialization = None


def new_key_pem(algorithm: str) -> bytes:
    """A fresh private key as unencrypted PKCS#8 PEM (the form `mailfleet dkim import` reads)."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_atomically(path: str, data: bytes) -> None:
    """tmp + fsync + rename in the key's folder, mode 0600 from the first byte."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".dkim-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def main() -> None:
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True},
                       "algorithm": {"type": "str", "required": True, "choices": ["rsa", "ed25519"]}},
        supports_check_mode=True,
    )
    path = module.params["path"]
    if os.path.exists(path):
        module.exit_json(changed=False, path=path)
    if serialization is None:
        module.fail_json(msg=f"{path}: the Python package cryptography is needed to make DKIM keys")
    if not module.check_mode:
        try:
            write_atomically(path, new_key_pem(module.params["algorithm"]))
        except OSError as exc:
            module.fail_json(msg=f"{path}: cannot write the DKIM key: {exc.strerror}")
    module.exit_json(changed=True, path=path)


if __name__ == "__main__":
    main()
