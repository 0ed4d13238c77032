"""Lean import and one-way import graph (docs/architecture.md).

Every hwprune import edge, top-level or lazy, goes from a higher layer to a lower one, the module graph
has no cycles, and no module exceeds the size cap.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hwprune

PKG = Path(hwprune.__file__).parent
MAX_LINES = 400  # soft cap of the style rules (DESIGN.md section 10)

# Layer of every package (first path component under hwprune/). An import must point to a strictly
# lower layer, or stay inside its own package; inside a package the module graph must be acyclic.
LAYERS: dict[str, int] = {
    "__init__": 0, "base": 0,
    "profiles": 1,
    "models": 2, "data": 2,
    "groups": 3,
    "sparsity": 4, "surgery": 4,
    "training": 5,
    "runtime": 6,
    "report": 7,
    "pipeline": 8,
    "cli": 9,
    "__main__": 10,
}
# (importer package, imported package) pairs allowed upward, each with its reason. Empty: none needed.
LAZY_OK: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = ("hwprune", *rel.parts)
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _package_key(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imported_modules(path: Path) -> set[str]:
    """Dotted hwprune modules imported anywhere in ``path`` (top-level or lazy)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hwprune") and node.level == 0:
            if node.module == "hwprune":
                out.update(f"hwprune.{a.name}" for a in node.names if a.name != "__version__")
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hwprune."))
    return out


def _module_graph() -> dict[str, set[str]]:
    return {_module_name(p): _imported_modules(p) for p in PKG.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for src, targets in _module_graph().items():
        key = _package_key(src)
        graph.setdefault(key, set()).update(_package_key(t) for t in targets if _package_key(t) != key)
    return graph


def test_every_module_has_a_layer() -> None:
    missing = sorted(set(_graph()) - set(LAYERS))
    assert not missing, f"add these modules to LAYERS in tests/test_imports.py: {missing}"


def test_imports_point_down_the_layers() -> None:
    bad = []
    for src, targets in _graph().items():
        for dst in targets:
            if dst not in LAYERS:
                bad.append(f"{src} -> {dst} (unknown package)")
            elif LAYERS[dst] >= LAYERS[src] and (src, dst) not in LAZY_OK:
                bad.append(f"{src} (layer {LAYERS[src]}) -> {dst} (layer {LAYERS[dst]})")
    assert not bad, "import edges against the layering:\n" + "\n".join(sorted(bad))


def test_lazy_exceptions_are_used() -> None:
    graph = _graph()
    dead = [pair for pair in LAZY_OK if pair[1] not in graph.get(pair[0], set())]
    assert not dead, f"LAZY_OK entries no import needs any more: {dead}"


def test_module_graph_has_no_cycle() -> None:
    """No import cycle between modules, lazy imports and package faces (`__init__`) included."""
    graph = _module_graph()
    known = set(graph)
    edges = {m: {t for t in ts if t in known and t != m} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_no_module_imports_the_cli() -> None:
    offenders = [s for s, t in _graph().items() if "cli" in t and s not in ("cli", "__main__")]
    assert not offenders


def test_modules_stay_under_the_size_cap() -> None:
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_import_hwprune_is_lean() -> None:
    code = ("import sys, hwprune, hwprune.profiles, hwprune.runtime.bench; "
            "heavy = [m for m in ('onnx', 'onnxruntime', 'tensorrt', 'torch') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing hwprune / profiles / bench pulled in: {out}"


def test_cli_help_does_not_import_onnx_or_tensorrt() -> None:
    code = ("import sys; from hwprune.cli import cli; "
            "from click.testing import CliRunner; r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0; "
            "print(','.join(m for m in ('onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"'hwprune --help' imported: {out}"


def test_packaging_lists_every_subpackage() -> None:
    import tomllib

    root = PKG.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"hwprune"} | {"hwprune." + p.parent.relative_to(PKG).as_posix().replace("/", ".")
                           for p in PKG.rglob("__init__.py") if p.parent != PKG}
    assert found - listed == set(), f"subpackages missing from pyproject.toml packages: {found - listed}"
    assert "hwprune.hardware_profiles" in listed
