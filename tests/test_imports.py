"""Lean import and one-way import graph (docs/architecture.md): every hwprune import edge, top-level or
lazy, goes from a higher layer to a lower one, the graph has no cycles, and no module exceeds the size cap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hwprune

PKG = Path(hwprune.__file__).parent
MAX_LINES = 400  # soft cap of the style rules (DESIGN.md section 10)

# Layer of every module (by its first path component under hwprune/). Imports must point to a
# strictly lower layer, except inside one package (e.g. hwprune.models.*).
LAYERS: dict[str, int] = {
    "errors": 0, "_optional": 1, "wgsef": 0, "jobconfig": 1,
    "profiles": 2, "models": 2, "data": 2, "distributed": 1, "envinfo": 1,
    "_group_segments": 3, "_group_masks": 4, "_group_layout": 4, "_group_ops": 4, "groups": 5,
    "checkpoint": 2, "_trt": 2, "bench": 3, "_bench_worker": 4, "export": 3,
    "optim": 6, "surgery": 6, "ssr": 6, "train": 3,
    "modelio": 7, "methods": 8,
    "trainjob": 9, "nmphase": 9, "plots": 8, "report": 9, "reportdata": 10,
    "select": 10, "bundle": 10, "latency": 11, "latency_budget": 12, "pipeline": 11,
    "cli": 20, "__init__": 0, "__main__": 21,
}
# Private halves of one unit (split only for the size cap) count as that unit.
UNITS = {"_profile_parse": "profiles"}
LAZY_OK = {("trainjob", "select"), ("modelio", "surgery")}


def _module_key(path: Path) -> str:
    rel = path.relative_to(PKG)
    key = rel.parts[0].removesuffix(".py")
    return UNITS.get(key, key)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hwprune"):
            parts = node.module.split(".")
            if len(parts) > 1:
                out.add(UNITS.get(parts[1], parts[1]))
            else:
                out.update(UNITS.get(a.name, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("hwprune."):
                    out.add(UNITS.get(a.name.split(".")[1], a.name.split(".")[1]))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        key = _module_key(path)
        graph.setdefault(key, set()).update(t for t in _imports(path) if t != key and t != "__version__")
    return graph


def test_every_module_has_a_layer() -> None:
    missing = sorted(set(_graph()) - set(LAYERS))
    assert not missing, f"add these modules to LAYERS in tests/test_imports.py: {missing}"


def test_imports_point_down_the_layers() -> None:
    bad = []
    for src, targets in _graph().items():
        for dst in targets:
            if dst not in LAYERS:
                bad.append(f"{src} -> {dst} (unknown module)")
            elif LAYERS[dst] >= LAYERS[src] and (src, dst) not in LAZY_OK:
                bad.append(f"{src} (layer {LAYERS[src]}) -> {dst} (layer {LAYERS[dst]})")
    assert not bad, "import edges against the layering:\n" + "\n".join(sorted(bad))


def test_no_module_imports_the_cli() -> None:
    offenders = [s for s, t in _graph().items() if "cli" in t and s not in ("cli", "__main__")]
    assert not offenders


def test_modules_stay_under_the_size_cap() -> None:
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_import_hwprune_is_lean() -> None:
    code = ("import sys, hwprune, hwprune.profiles, hwprune.bench; "
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
