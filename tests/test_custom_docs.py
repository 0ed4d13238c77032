"""The docs' code runs as written: README's "your own model" example, docs/custom-models.md, every link.

The code is extracted from the Markdown files (between their markers), so the docs cannot drift
from the code; the README example runs the ``hwprune`` console script in a fresh working directory,
as a user of a fresh clone would.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CUSTOM = ROOT / "docs" / "custom-models.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", flags=re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
MAX_LOOP_LINES = 30


def _section(path: Path, marker: str) -> str:
    text = path.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    assert start in text and end in text, f"{path.name}: markers {marker} missing"
    return text.split(start, 1)[1].split(end, 1)[0]


def _blocks(text: str, lang: str) -> list[str]:
    return [code for kind, code in FENCE.findall(text) if kind == lang]


def _hwprune() -> str:
    exe = Path(sys.executable).with_name("hwprune")
    assert exe.is_file(), "the hwprune console script is not installed next to this python"
    return str(exe)


def test_custom_training_loop_runs_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (code,) = _blocks(_section(CUSTOM, "custom-loop"), "python")
    assert len(code.strip().splitlines()) <= MAX_LOOP_LINES, "the documented loop must stay within 30 lines"
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "__docs__"}
    exec(compile(code, str(CUSTOM), "exec"), scope)  # noqa: S102 - the documented example itself
    compact, model = scope["compact"], scope["model"]
    n = [sum(p.numel() for p in m.parameters()) for m in (model, compact)]  # type: ignore[attr-defined]
    assert n[1] < n[0] and (tmp_path / "compact.onnx").stat().st_size > 0
    assert all(int(v) == int(k) for v, k in zip(scope["groups"].nonzero_per_scope(), scope["k"], strict=True))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_readme_own_model_example_runs_unchanged(tmp_path: Path) -> None:
    section = _section(README, "own-model")
    py = _blocks(section, "python")
    module = next(b for b in py if b.startswith("# mymodels.py"))
    (tmp_path / "mymodels.py").write_text(module)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # as in a fresh shell: only the working directory makes mymodels importable
    for line in "\n".join(_blocks(section, "bash")).splitlines():
        args = shlex.split(line)
        assert args[0] == "hwprune"
        r = subprocess.run([_hwprune(), *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        assert r.returncode == 0, r.stderr
    loader = next(b for b in py if not b.startswith("# mymodels.py"))
    r = subprocess.run([sys.executable, "-c", loader], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "mymodels:tiny_cnn" in r.stdout
    # the documented load_model block of docs/custom-models.md, on the same run, from another directory
    (loads,) = [b for b in _blocks(CUSTOM.read_text(), "python") if "load_model" in b]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = f"from pathlib import Path\nRUN = Path({str(tmp_path / 'runs' / 'mine')!r})\n" + loads
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr  # the recorded model_path makes mymodels importable from anywhere
    assert "parameters" in r.stdout


def _md_files() -> list[Path]:
    files = [README, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md",
             ROOT / "hardware_profiles" / "README.md"]
    return [f for f in files if f.is_file()]


def _anchors(path: Path) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", _md_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(doc: Path) -> None:
    bad = []
    for m in LINK.finditer(doc.read_text()):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists() or ROOT not in (dest, *dest.parents):
            bad.append(f"{target} (no such file in the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target} (no heading #{anchor})")
    assert not bad, f"{doc.relative_to(ROOT)}: broken links: {bad}"
