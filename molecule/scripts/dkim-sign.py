#!/usr/bin/env python3
"""Sign a message read on stdin with DKIM (dkimpy, relaxed/relaxed, rsa-sha256) and print it signed, with LF line
endings for sendmail: the Molecule `full` scenario's signed sender.

  dkim-sign.py KEY.pem DOMAIN SELECTOR < message > signed
"""

from __future__ import annotations

import sys
from pathlib import Path

import dkim


def main() -> int:
    key, domain, selector = sys.argv[1:4]
    message = sys.stdin.read().replace("\r\n", "\n").replace("\n", "\r\n").encode()
    signature = dkim.sign(message, selector.encode(), domain.encode(), Path(key).read_bytes(),
                          canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"From", b"To", b"Subject", b"Date", b"Message-ID"])
    sys.stdout.write((signature + message).decode().replace("\r\n", "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
