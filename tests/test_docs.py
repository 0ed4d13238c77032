"""docs/architecture.md lists every module of hwprune, with its layer (no drift between docs and code)."""

from __future__ import annotations

import re
from pathlib import Path

import hwprune
from tests.test_imports import LAYERS, _module_name, _package_key

PKG = Path(hwprune.__file__).parent
DOC = PKG.parent / "docs" / "architecture.md"


def _table() -> dict[str, int]:
    rows = re.findall(r"^\| `(hwprune[\w.]*)` \| (\d+) \|", DOC.read_text(), flags=re.MULTILINE)
    return {name: int(layer) for name, layer in rows}


def test_architecture_table_lists_every_module_with_its_layer() -> None:
    modules = {_module_name(p) for p in PKG.rglob("*.py")}
    table = _table()
    assert sorted(modules - set(table)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(table) - modules) == [], "docs/architecture.md lists modules that do not exist"
    wrong = {m: (layer, LAYERS[_package_key(m)]) for m, layer in table.items() if layer != LAYERS[_package_key(m)]}
    assert not wrong, f"layer column differs from tests/test_imports.py: {wrong}"
