"""The rooms of appliance/ import downward only: no package imports one above it, and none import each other.

The floors, lowest first (docs/ARCHITECTURE.md): what a package may import is every package on a lower floor.
A new package gets a floor here; an import that breaks the order fails this test with the file and the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"

FLOORS = [
    {"message", "durable", "config", "forwarding", "metrics"},  # the ground floor: imports nothing of appliance
    {"dns", "store", "auth", "pipeline", "sieve"},
    {"delivery", "imap", "pop3", "filters", "quarantine", "abuse", "screening", "senderauth",
     "signing", "egress", "tlspolicy", "managesieve"},
    {"queue", "smtp"},
    {"web"},  # the console and its API: a view over every part below it
    {"service"},
    {"cli"},
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}


def _imports() -> list[tuple[str, str, str]]:
    """(importing package, imported package, "file:line") for every import of appliance.* in appliance/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue  # appliance/__init__.py
        importer = relative.parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                parts = module.split(".")
                if parts[0] == "appliance" and len(parts) > 1 and parts[1] != importer:
                    found.append((importer, parts[1], f"{relative}:{node.lineno}"))
    return found


def test_every_package_has_a_floor() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages - FLOOR.keys() == set(), "give the new package a floor in FLOORS"


def test_imports_point_down() -> None:
    upward = [f"{where}: {importer} (floor {FLOOR[importer]}) imports {imported} (floor {FLOOR.get(imported)})"
              for importer, imported, where in _imports()
              if FLOOR.get(imported, len(FLOORS)) >= FLOOR[importer]]
    assert upward == []


def test_the_ground_floor_imports_nothing_of_appliance() -> None:
    assert [where for importer, _, where in _imports() if FLOOR[importer] == 0] == []
