"""Stand-in for the interpreter's exports until its branch lands: ``appliance.sieve.check``, ``SieveError`` and
``EXTENSIONS`` made from sievelib's parser (a real parser: the scripts these tests use are valid, or invalid, for
any Sieve parser). ``install`` sets only the names that ``appliance.sieve`` lacks, so with the interpreter merged
it does nothing; the lead drops this file at merge (see ``conftest.py``, its one caller)."""

from __future__ import annotations

import importlib
from pathlib import Path

SHIM_EXTENSIONS = ("fileinto", "reject", "envelope", "body", "copy", "imap4flags", "variables", "vacation",
                   "relational", "subaddress", "date")


class SieveError(ValueError):
    pass


def _check(text: str) -> None:
    from sievelib.parser import Parser

    parser = Parser()
    if not parser.parse(text):
        raise SieveError(parser.error)


def install() -> None:
    sieve = importlib.import_module("appliance.sieve")
    if not hasattr(sieve, "check"):
        sieve.SieveError = SieveError
        sieve.check = _check
        sieve.EXTENSIONS = SHIM_EXTENSIONS


def sitecustomize_dir(where: Path) -> Path:
    """A folder whose sitecustomize.py installs the shim in a child ``mailfleet serve`` (on its PYTHONPATH)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import _sieve_shim\n"
        "_sieve_shim.install()\n")
    return where
