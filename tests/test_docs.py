"""docs/architecture.md lists every module of hwprune with its layer, job and imports (no drift).

``python tests/test_docs.py`` prints the module table as the code has it (paste it into the doc).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root

import hwprune  # noqa: E402
from tests.test_imports import LAYERS, _module_name, _package_key  # noqa: E402

PKG = Path(hwprune.__file__).parent
DOC = PKG.parent / "docs" / "architecture.md"
ROW = re.compile(r"^\| `(hwprune[\w.]*)` \| (\d+) \| (.*) \| (.*) \|$", flags=re.MULTILINE)


def _imports(path: Path) -> set[str]:
    """Dotted hwprune modules ``path`` imports (``from pkg import submodule`` included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hwprune") and not node.level:
            if node.module == "hwprune":
                out.update(f"hwprune.{a.name}" for a in node.names if a.name != "__version__")
                continue
            out.add(node.module)
            for a in node.names:
                if PKG.joinpath(*node.module.split(".")[1:], a.name + ".py").is_file():
                    out.add(f"{node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hwprune."))
    return out


def expected_rows() -> dict[str, tuple[int, str, str]]:
    """Module -> (layer, first docstring line, imports column) as the code has them."""
    rows = {}
    for path in sorted(PKG.rglob("*.py")):
        name, pkg = _module_name(path), _package_key(_module_name(path))
        doc = (ast.get_docstring(ast.parse(path.read_text())) or "-").splitlines()[0].replace("|", "\\|")
        imps = _imports(path) - {name}
        other = sorted({_package_key(i) for i in imps} - {pkg})
        own = sorted(i[len(f"hwprune.{pkg}") + 1:] for i in imps if _package_key(i) == pkg and i.count(".") > 1)
        rows[name] = (LAYERS[pkg], doc, ", ".join([f"`{o}`" for o in other] + [f"`.{m}`" for m in own]) or "-")
    return rows


def test_architecture_table_matches_the_code() -> None:
    table = {m: (int(layer), job, imports) for m, layer, job, imports in ROW.findall(DOC.read_text())}
    want = expected_rows()
    assert sorted(set(want) - set(table)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(table) - set(want)) == [], "docs/architecture.md lists modules that do not exist"
    stale = {m: (table[m], want[m]) for m in want if table[m][0] != want[m][0] or table[m][2] != want[m][2]}
    assert not stale, f"layer or imports column out of date (run python tests/test_docs.py): {stale}"


if __name__ == "__main__":
    for m, (layer, job, imports) in expected_rows().items():
        print(f"| `{m}` | {layer} | {job} | {imports} |")
