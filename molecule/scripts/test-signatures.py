#!/usr/bin/env python3
"""Write the scenario's ClamAV test database and print its path: no freshclam here, so clamd runs on this alone.

  test-signatures.py     (writes $MOLECULE_EPHEMERAL_DIRECTORY/clamav/mailfleet-test.ndb, the same bytes each run)

One extended signature (.ndb, "Name:TargetType:Offset:HexSignature"; ClamAV's signatures.md) for the EICAR
test file, anywhere (offset *) in any file (target 0): clamd reports it as Mailfleet.Test.EICAR.UNOFFICIAL.
The EICAR string is assembled here, so no file of the repository matches an antivirus scanner itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def main() -> int:
    folder = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY") or ".") / "clamav"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mailfleet-test.ndb"
    path.write_text(f"Mailfleet.Test.EICAR:0:*:{EICAR.encode().hex()}\n", encoding="ascii")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
