"""Write a benchmark's results (Markdown table, CSV rows, env JSON) atomically; used by the drivers here.

Only the three drivers ``train_bench.py``, ``sparsity_sweep.py`` and ``compare_methods.py`` import it
(they run as scripts, so this directory is on ``sys.path``).
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hwprune.base.files import atomic_write_text

__all__ = ["RESULTS", "write_atomic", "command_line", "md_table", "write_results", "torch_tag", "ort_tag"]

RESULTS = Path(__file__).resolve().parent / "results"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``hwprune.base.files.atomic_write_text``)."""
    atomic_write_text(path, text)


def command_line() -> str:
    """The exact command that started this process (``.venv/bin/python benchmarks/x.py --opt ...``)."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def torch_tag() -> str:
    """``pt2130`` for torch 2.13.0."""
    import torch

    return "pt" + "".join(torch.__version__.split("+")[0].split(".")[:3])


def ort_tag() -> str:
    """``ort1311`` for onnxruntime 1.31.1."""
    import onnxruntime

    return "ort" + "".join(onnxruntime.__version__.split(".")[:3])


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    """Markdown table lines; ``columns`` = (row key, header)."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k, _ in columns) + " |")
    return lines


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def write_results(stem: Path, rows: Sequence[Mapping[str, Any]], md_lines: Sequence[str],
                  options: Mapping[str, Any]) -> None:
    """Write ``stem.csv`` (rows), ``stem.md`` (lines + the command) and ``stem.env.json`` (machine + options)."""
    from hwprune.runtime.envinfo import collect_env

    stem = Path(stem)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(stem.with_name(stem.name + ".csv"), buf.getvalue())
    cmd = command_line()
    text = "\n".join([*md_lines, "", "Command:", "", f"    {cmd}", ""])
    write_atomic(stem.with_name(stem.name + ".md"), text)
    env = {**collect_env(include_gpu=False), "command": cmd, "options": dict(options),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(stem.with_name(stem.name + ".env.json"), json.dumps(env, indent=2, default=str) + "\n")
