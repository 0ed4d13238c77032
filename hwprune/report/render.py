"""Run report: a versioned dict schema, ``report.json`` + ``report.md`` + PNG plots, terminal summary.

The pipeline fills a :class:`RunReport` dict; :func:`write_report` validates it, adds derived numbers
(speed-up per batch size, MAC reduction, speed-up / MAC reduction, achieved sparsity per scope),
draws the plots and writes the JSON and Markdown reports atomically (a run's paths: its ``RunDir``).
Latencies are milliseconds; accuracies are fractions in [0, 1]; MACs are per sample.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from hwprune.base.errors import ConfigError
from hwprune.base.files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["REPORT_SCHEMA_VERSION", "REQUIRED_KEYS", "DensePruned", "ScopeRow", "RunReport", "validate_report",
           "derive", "render_markdown", "write_report", "summary_table"]

REPORT_SCHEMA_VERSION = 1


class DensePruned(TypedDict):
    """A number for the dense and the pruned model."""

    dense: float
    pruned: float


class ScopeRow(TypedDict):
    """One sparsity scope: ``total`` groups, target ``k`` kept, ``nonzero`` kept in the result."""

    name: str
    total: int
    k: int
    nonzero: int


class RunReport(TypedDict, total=False):
    """Schema of ``report.json`` (keys in ``REQUIRED_KEYS`` are required, the rest optional).

    Required: ``schema_version`` (= REPORT_SCHEMA_VERSION), ``profile``, ``model``, ``data``,
    ``method``, ``sparsity_target`` (fraction of groups removed per scope), ``scopes`` (ScopeRow list),
    ``accuracy``, ``params``, ``macs`` (DensePruned), ``latency`` (``{"dense": [...], "pruned": [...]}``,
    ``hwprune.runtime.bench.LatencyStats.to_dict()`` rows, one per batch size), ``environment``
    (``hwprune.runtime.envinfo.collect_env()``), ``versions`` (package -> version), ``timings`` (step -> s).
    Optional: ``run_dir``, ``created``, ``widths`` (surgery plan widths), ``sweep`` (Pareto points
    ``{label, accuracy, latency_ms, kind}``), ``notes``, ``accuracy_of`` (``{split, dense, pruned,
    test_images}``: the split and the models ``accuracy`` was measured on), ``val_accuracy`` (per stage
    on the validation split, with ``val_images``), ``splits``, ``finetuned_model`` (compact/masked),
    ``staircase_widths`` (calibrated profiles: per layer the kept width against the measured staircase,
    ``hwprune.runtime.steptable.kept_vs_staircase``), ``timing`` (``{profile, timed, same_as_profile,
    fallback_note}``: backend/provider/precision asked for and used), ``selection`` (``{zeroed_by, text}``:
    which step removed the groups), ``sparsity`` (``{budget, requested, achieved}``), ``warnings``
    (granularity fallbacks, lost alignment).
    Added by :func:`derive`: ``speedup``, ``mac_reduction``, ``param_reduction``, ``plots``.
    """

    schema_version: int
    profile: str
    model: str
    data: str
    method: str
    sparsity_target: float
    scopes: list[ScopeRow]
    accuracy: DensePruned
    params: DensePruned
    macs: DensePruned
    latency: dict[str, list[dict[str, Any]]]
    environment: dict[str, Any]
    versions: dict[str, Any]
    timings: dict[str, float]
    run_dir: str
    created: str
    widths: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    notes: str
    speedup: list[dict[str, Any]]
    mac_reduction: float
    param_reduction: float
    plots: dict[str, str]


REQUIRED_KEYS: tuple[str, ...] = ("schema_version", "profile", "model", "data", "method", "sparsity_target", "scopes",
                                  "accuracy", "params", "macs", "latency", "environment", "versions", "timings")
_PAIRS = ("accuracy", "params", "macs")


def validate_report(d: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` listing every missing or malformed required key of a report dict."""
    problems = [f"missing '{k}'" for k in REQUIRED_KEYS if k not in d]
    if "schema_version" in d and d["schema_version"] != REPORT_SCHEMA_VERSION:
        problems.append(f"schema_version {d['schema_version']!r} != {REPORT_SCHEMA_VERSION}")
    for key in _PAIRS:
        v = d.get(key)
        if key in d and not (isinstance(v, Mapping) and "dense" in v and "pruned" in v):
            problems.append(f"'{key}' needs 'dense' and 'pruned'")
    lat = d.get("latency")
    if "latency" in d:
        if not isinstance(lat, Mapping) or not all(isinstance(lat.get(k), list) for k in ("dense", "pruned")):
            problems.append("'latency' needs 'dense' and 'pruned' lists")
        else:
            for kind in ("dense", "pruned"):
                bad = [i for i, r in enumerate(lat[kind]) if not ("batch" in r and "median_ms" in r)]
                if bad:
                    problems.append(f"latency.{kind}[{bad[0]}] needs 'batch' and 'median_ms'")
    scopes = d.get("scopes")
    if "scopes" in d and (not isinstance(scopes, list) or
                          any(not {"name", "total", "k", "nonzero"} <= set(s) for s in scopes)):
        problems.append("'scopes' must be a list of {name, total, k, nonzero}")
    if problems:
        raise ConfigError(f"invalid report: {'; '.join(problems)}; required keys: {', '.join(REQUIRED_KEYS)}")


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return float(a) / float(b) if float(b) > 0 else None
    except (TypeError, ValueError):
        return None


def derive(report: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``report`` with ``speedup`` rows per batch size, ``mac_reduction``, ``param_reduction``."""
    validate_report(report)
    out = dict(report)
    out["mac_reduction"] = _ratio(report["macs"]["dense"], report["macs"]["pruned"])
    out["param_reduction"] = _ratio(report["params"]["dense"], report["params"]["pruned"])
    dense = {int(r["batch"]): r for r in report["latency"]["dense"]}
    rows = []
    for p in report["latency"]["pruned"]:
        d = dense.get(int(p["batch"]))
        if d is None:
            continue
        s = _ratio(d["median_ms"], p["median_ms"])
        rows.append({"batch": int(p["batch"]), "dense_median_ms": d["median_ms"], "pruned_median_ms": p["median_ms"],
                     "speedup": s, "speedup_per_mac_reduction": _ratio(s, out["mac_reduction"]) if s else None})
    out["speedup"] = rows
    return out


def _f(v: Any, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int) and not isinstance(v, bool) and fmt == ".4g":
        return str(v)  # counts (params, MACs, groups) in full
    return format(v, fmt) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` text for a derived report (see :func:`derive`).

    Long because it is the report's sections in order (a template in code).
    """
    r = report
    md = [f"# hwprune run: {r['model']} on {r['data']} for {r['profile']}", ""]
    sp = r.get("sparsity") or {}
    asked = "per-scope k (latency budget)" if sp.get("budget") == "k_per_scope" else _f(r["sparsity_target"])
    md += ["## Summary", ""] + _table(["profile", "model", "data", "method", "requested sparsity"],
                                      [[r["profile"], r["model"], r["data"], r["method"], asked]])
    md += _timing_lines(r)
    md += _table(["scope", "groups", "target kept (k)", "kept", "requested sparsity", "target sparsity (from k)",
                  "achieved sparsity", "removed by"],
                 [[s["name"], s["total"], s["k"], s["nonzero"], sp.get("requested"),
                   1 - s["k"] / s["total"] if s["total"] else None,
                   1 - s["nonzero"] / s["total"] if s["total"] else None,
                   ", ".join(f"{c} {n}" for c, n in (s.get("zeroed_by") or {}).items() if n) or "-"]
                  for s in r["scopes"]])
    if (r.get("selection") or {}).get("text"):
        md += [f"Who chose the groups: {r['selection']['text']} (k = ceil((1 - s) * groups) per scope; `prox` = "
               "the method's proximal step, `halfspace` = the half-space step, `finalize` = the method's own top-k, "
               "`projection` = the final top-k projection, `dead` = zero before the sparse phase).", ""]
    for w in r.get("warnings", []):
        md += [f"**Warning:** {w}", ""]
    md += ["## Accuracy, size, compute", ""]
    md += _table(["", "dense", "pruned", "ratio dense/pruned"],
                 [["accuracy", r["accuracy"]["dense"], r["accuracy"]["pruned"], "-"],
                  ["params", r["params"]["dense"], r["params"]["pruned"], r.get("param_reduction")],
                  ["MACs / sample", r["macs"]["dense"], r["macs"]["pruned"], r.get("mac_reduction")]])
    md += _accuracy_notes(r)
    md += ["## Latency (ms)", ""]
    rows = []
    for kind in ("dense", "pruned"):
        for s in r["latency"][kind]:
            rows.append([kind, s["batch"], s.get("backend", "-"), s.get("precision", "-"), s["median_ms"],
                         s.get("p90_ms"), s.get("p99_ms"), s.get("min_ms"), s.get("throughput_per_s")])
    md += _table(["model", "batch", "backend", "precision", "median", "p90", "p99", "min", "samples/s"], rows)
    md += _table(["batch", "dense median", "pruned median", "speed-up", "speed-up / MAC reduction"],
                 [[s["batch"], s["dense_median_ms"], s["pruned_median_ms"], s["speedup"],
                   s["speedup_per_mac_reduction"]] for s in r.get("speedup", [])])
    md += ["## Wall time per step (s)", ""] + _table(["step", "seconds"], [[k, v] for k, v in r["timings"].items()])
    env = r["environment"]
    md += ["## Environment", ""] + _table(["key", "value"], [[k, json.dumps(v) if isinstance(v, list | dict) else
                                                             _f(v)] for k, v in env.items() if k != "versions"])
    md += ["## Versions", ""] + _table(["package", "version"], [[k, _f(v)] for k, v in r["versions"].items()])
    if r.get("plots"):
        md += ["## Plots", ""] + [f"![{name}]({rel})" for name, rel in r["plots"].items()] + [""]
    md += _nm_lines(r)
    if r.get("latency_budget"):
        lb = r["latency_budget"]
        md += ["## Latency budget (batch 1)", ""] + _table(
            ["iteration", "target ms", "predicted ms", "measured ms", "groups kept"],
            [[i, _f(it["target_ms"]), _f(it["predicted_ms"]), _f(it["measured_ms"]), sum(it["k"])]
             for i, it in enumerate(lb.get("iterations", []))])
        md += [f"Budget {_f(lb['budget_ms'])} ms (dense {_f(lb['dense_ms'])} ms): final predicted "
               f"{_f(lb['predicted_ms'])} ms, measured {_f(lb['measured_ms'])} ms, miss {lb['miss']:+.1%}, "
               f"met: {lb['met']}.", ""]
    if r.get("staircase_widths"):
        sw = r["staircase_widths"]
        rows = [[w["module"], w["kind"], w["before"], w["after"], w["block"], w["step_width"],
                 "yes" if w["on_step"] else "NO"] for w in sw["layers"]]
        off = sum(not w["on_step"] for w in sw["layers"])
        md += ["## Kept widths vs the measured staircase", ""] + _table(
            ["layer", "kind", "full width", "kept", "staircase block", "costs like", "on a step"], rows)
        md += [f"Blocks measured by `hwprune profile calibrate` ({sw['backend']}, {sw['threads']} thread(s), batch "
               f"{sw['batch']}): {json.dumps(sw['blocks'])}; {off} of {len(rows)} layers kept a width off a step.", ""]
    if r.get("notes"):
        md += ["## Notes", "", str(r["notes"]), ""]
    return "\n".join(md)


def _timing_lines(r: Mapping[str, Any]) -> list[str]:
    """What the profile asked to be timed on vs what was timed (a loud line when they differ)."""
    t = r.get("timing")
    if not t:
        return []
    asked, timed = ("/".join(str(d.get(k)) for k in ("backend", "provider", "precision")) for d in (t["profile"],
                                                                                                     t["timed"]))
    if t.get("same_as_profile"):
        return [f"Timed on {timed}, the profile's backend.", ""]
    return [f"**Timed on {timed}, NOT on the profile's {asked}:** {t.get('fallback_note') or ''}", ""]


def _nm_lines(r: Mapping[str, Any]) -> list[str]:
    """The N:M phase: validation accuracy before it, after its projection and after its fine-tune."""
    nm = r.get("nm")
    if not nm:
        return []
    v = nm.get("val_accuracy") or {}
    return ["## N:M phase", ""] + _table(
        ["pattern", "layers", "val. accuracy before", "after the N:M projection", "after the N:M fine-tune",
         "test accuracy (final)"],
        [[nm["pattern"], len(nm.get("layers", [])), v.get("dense"), v.get("projected"), v.get("final"),
          nm.get("test_accuracy")]])


def _accuracy_notes(r: Mapping[str, Any]) -> list[str]:
    """Which model and split each accuracy belongs to, and the validation accuracy of every stage."""
    of = r.get("accuracy_of")
    if not of:
        return []
    val = r.get("val_accuracy") or {}
    lines = [f"Accuracy: top-1 on the {of['split']} split ({_f(of.get('test_images'))} images), measured once at the "
             f"end for the `{of['dense']}` model and the exported `{of['pruned']}` model; the per-epoch curves and "
             f"the stage accuracies below use the validation split ({_f(val.get('val_images'))} images carved from "
             f"the training data, data seed {_f((r.get('splits') or {}).get('data_seed'))}).", ""]
    if val.get("val_images"):
        finetuned = r.get("finetuned_model", "compact")
        lines += _table(["validation accuracy", "dense", "after sparse phase", "after projection",
                         f"after fine-tune ({finetuned})"],
                        [["", val.get("dense"), val.get("sparse"), val.get("projected"), val.get("final")]])
    return lines


def _pareto_points(r: Mapping[str, Any]) -> list[dict[str, Any]]:
    pts = []
    for kind in ("dense", "pruned"):
        lat = sorted(r["latency"][kind], key=lambda s: s["batch"])
        if lat:
            pts.append({"label": kind, "accuracy": r["accuracy"][kind], "latency_ms": lat[0]["median_ms"],
                        "kind": kind})
    return pts + [dict(p) for p in r.get("sweep", [])]


def write_report(report: Mapping[str, Any], *, json_path: Path, md_path: Path, plots_dir: Path,
                 log_path: Path | None = None) -> tuple[Path, Path]:
    """Validate ``report``, draw the plots, write ``json_path`` and ``md_path``; returns both paths.

    Plots in ``plots_dir``: ``training.png`` from the JSON-lines log at ``log_path`` (if given and
    present), ``widths.png`` from ``report["widths"]``, ``pareto.png`` from the dense/pruned points
    (smallest batch) plus ``report["sweep"]``. The report records them relative to ``json_path``'s
    directory. A run's paths come from its ``RunDir`` (``report_paths``, ``plots_dir``, ``log_path``).
    """
    from hwprune.report import plots

    out = derive(report)
    root = Path(json_path).parent
    made: dict[str, str] = {}

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, root)).as_posix()

    if log_path is not None and Path(log_path).is_file():
        records = plots.read_log(Path(log_path))
        if records:
            made["training"] = rel(plots.plot_training(records, Path(plots_dir) / "training.png"))
    if out.get("widths"):
        made["widths"] = rel(plots.plot_widths(out["widths"], Path(plots_dir) / "widths.png"))
    points = _pareto_points(out)
    if points:
        made["pareto"] = rel(plots.plot_pareto(points, Path(plots_dir) / "pareto.png"))
    out["plots"] = made
    atomic_write_json(json_path, out)
    atomic_write_text(md_path, render_markdown(out))
    return Path(json_path), Path(md_path)


def summary_table(report: Mapping[str, Any]) -> Table:
    """A rich table for the terminal: accuracy, params, MACs, and latency/speed-up per batch size."""
    from rich.table import Table

    r = derive(report) if "speedup" not in report else report
    lb = r.get("latency_budget")
    target = f"latency budget {lb['budget_ms']:.4g} ms" if lb else f"sparsity {r['sparsity_target']:g}"
    timed = (r.get("timing") or {}).get("timed") or {}
    on = "/".join(str(timed.get(k)) for k in ("backend", "provider", "precision")) if timed else "?"
    same = (r.get("timing") or {}).get("same_as_profile", True)
    t = Table(title=f"{r['model']} / {r['data']} / {r['profile']} ({r['method']}, {target}); timed on {on}"
              f"{'' if same else ' (NOT the profile backend)'}")
    for col in ("metric", "dense", "pruned", "ratio"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    t.add_row("accuracy", f"{r['accuracy']['dense']:.4f}", f"{r['accuracy']['pruned']:.4f}", "")
    t.add_row("params", _f(r["params"]["dense"], ","), _f(r["params"]["pruned"], ","),
              _f(r.get("param_reduction"), ".2f"))
    t.add_row("MACs", _f(r["macs"]["dense"], ","), _f(r["macs"]["pruned"], ","), _f(r.get("mac_reduction"), ".2f"))
    for s in r.get("speedup", []):
        t.add_row(f"latency b={s['batch']} (ms)", _f(s["dense_median_ms"]), _f(s["pruned_median_ms"]),
                  f"{_f(s['speedup'], '.2f')}x")
    return t
