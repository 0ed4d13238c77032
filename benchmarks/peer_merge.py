"""Merge several ``peer_compare`` result CSVs (e.g. one per seed or model, run separately) into one table.

The per-run rows are read back from each ``peer_compare-*.csv``; the seed means, the issue-11 target
lines and the accuracy-vs-latency plot are the ones ``peer_compare`` itself writes (``summarize``,
``verdicts``, ``plot``), so a split run and a single run report the same way. A (model, seed, sparsity,
arm) present in two inputs is an error (one line, exit code 2): a merge never averages a run twice.

    .venv/bin/python benchmarks/peer_merge.py results/peer_compare-A.csv results/peer_compare-B.csv
        --tag NAME --note "which machines ran which file"     (run from benchmarks/)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from _results_io import RESULTS, md_table, write_results
from peer_compare import SUMMARY_COLUMNS, plot, summarize, verdicts

KEY = ("model", "seed", "sparsity", "arm")


def _value(text: str) -> Any:
    """A CSV cell back to int / float / str ('' stays '': a column the arm does not have)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Every run row of ``paths``; raises ValueError naming a duplicate run or a file that is not peer_compare's."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], Path] = {}
    for path in paths:
        with path.open(newline="") as fh:
            for raw in csv.DictReader(fh):
                if not set(KEY) <= set(raw):
                    raise ValueError(f"{path}: not a peer_compare CSV (needs columns {', '.join(KEY)})")
                row = {k: _value(v) for k, v in raw.items()}
                row["sparsity"] = float(row["sparsity"])
                key = tuple(row[k] for k in KEY)
                if key in seen:
                    raise ValueError(f"run {dict(zip(KEY, key, strict=True))} is in both {seen[key]} and {path}")
                seen[key] = path
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Write ``peer_compare-<tag>-merged.{csv,md,env.json,png}`` from the given CSVs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csvs", nargs="+", type=Path)
    p.add_argument("--tag", required=True)
    p.add_argument("--note", default="")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        missing = [str(c) for c in args.csvs if not c.is_file()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        rows = read_rows(args.csvs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(rows)
    md = [f"# peer_compare, merged: {len(rows)} runs from {len(args.csvs)} files", "",
          f"Inputs (each file's .md states its protocol and machine): {', '.join(c.name for c in args.csvs)}. "
          f"{args.note}", "", "## Mean over seeds", "", *md_table(summary, SUMMARY_COLUMNS), "",
          "## Targets", "", *verdicts(summary, rows), ""]
    stem = args.out_dir / f"peer_compare-{args.tag}-merged"
    write_results(stem, rows, md, {"inputs": [str(c) for c in args.csvs], "note": args.note})
    plot(summary, stem.with_name(stem.name + ".png"))
    print("\n".join(verdicts(summary, rows)))
    print(f"written: {stem}.{{csv,md,env.json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
