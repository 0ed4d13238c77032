"""WGSEF diagnosis (issue 11): why WGSEF lost to magnitude pruning, one candidate cause at a time.

Per model ONE dense model is trained (``--dense-epochs``) and saved under ``--work-dir``; every arm
starts from it (``TrainJobConfig(checkpoint=...)``) with the same ``--post-epochs`` after the dense
phase (sparse phase + compact fine-tune; one-shot arms fine-tune for all of them; an arm whose
sparse phase ends early, when the prox has selected k groups, gives its remaining optimiser steps to the
fine-tune). Each arm changes ONE thing against ``old`` (hwprune's WGSEF before issue 11: fixed
lam 0.5, the whole group in the prox, the ridge kept, half-space step after 30 % of the phase) or
against ``recipe`` (the library default now):

* lam scale: ``old-lam0.05``, ``old-lam2``; gamma/beta out of / alone in the prox: ``old-gb-out``,
  ``old-gb-only``; sparse-phase length: ``old-len1`` (1 sparse epoch, the rest fine-tune);
* lam schedule: ``old-cont`` (per-scope continuation + release at k, ridge kept), ``old-cancel``
  (ridge-free DC step, fixed lam); BN recalibration: ``recipe-norecal``;
* the recipe's own choices: ``recipe-group`` (prox on the whole group), ``recipe-keep`` (ridge kept),
  ``recipe-renorm`` (= ``recipe`` since renorm is the default), ``recipe-nostop`` (the sparse phase
  runs all its epochs), ``recipe-sf0.2`` (slower ramp), ``recipe-rewind`` (selection kept, weights
  reset to the dense model's), ``recipe-kd`` (distillation);
* against ``cancel`` (the recipe with ridge ``cancel``, the default before ``renorm``): ``cancel-group``,
  ``cancel-sf0.6`` (much slower ramp), ``cancel-eps0`` (no half-space step), ``cancel-rewind``,
  ``cancel-lowlr`` (sparse phase at the fine-tune lr), ``cancel-group-rewind``, ``cancel-group-lowlr``;
* references: ``magnitude`` (hwprune one-shot), ``magnitude-kd`` and ``random`` / ``random-s1``
  (k random groups per scope: does the selection matter at all?).

Per arm: validation accuracy when the sparse phase ended (before the projection), after the
projection (+ BN recalibration unless disabled) and at the end; test accuracy at the end; groups
left when the sparse phase ended vs k, groups the projection removed and who zeroed the others; the
median ratio of the kept groups' norms after the projection to their dense norms (the ridge on the
survivors); epochs and seconds. Finished arms are cached in ``--work-dir``.

Writes ``benchmarks/results/wgsef_diagnosis-<data>-<tag>-cpu-pt<ver>.{md,csv,env.json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from _results_io import RESULTS, md_table, torch_tag, write_results

from hwprune.base.files import atomic_write_json
from hwprune.groups import build_groups
from hwprune.surgery.modelio import load_model
from hwprune.training.config import TrainJobConfig
from hwprune.training.job import run_train_job
from hwprune.training.rundir import RunDir

OLD = {"schedule": "constant", "prox_on": "group", "ridge": "keep", "stop_when_selected": False}
CANCEL = {"ridge": "cancel"}
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude": ("reference: hwprune one-shot magnitude", {"method": "magnitude"}),
    "old": ("WGSEF before issue 11 (lam 0.5, whole group, ridge kept)", {"method_options": OLD, "lam": 0.5}),
    "old-lam0.05": ("lam scale", {"method_options": OLD, "lam": 0.05}),
    "old-lam2": ("lam scale", {"method_options": OLD, "lam": 2.0}),
    "old-gb-out": ("gamma/beta out of the prox", {"method_options": {**OLD, "prox_on": "weights"}, "lam": 0.5}),
    "old-gb-only": ("gamma/beta alone in the prox", {"method_options": {**OLD, "prox_on": "norm"}, "lam": 0.5}),
    "old-len1": ("sparse-phase length 1", {"method_options": OLD, "lam": 0.5, "sparse": 1}),
    "old-cont": ("lam schedule: continuation", {"method_options": {**OLD, "schedule": "continuation"}}),
    "old-cancel": ("ridge-free DC step (fixed lam)", {"method_options": {**OLD, "ridge": "cancel"}, "lam": 0.5}),
    "recipe": ("the library default", {}),
    "recipe-norecal": ("no BN recalibration", {"bn_recalibrate": False}),
    "recipe-group": ("prox on the whole group", {"method_options": {"prox_on": "group"}}),
    "recipe-keep": ("ridge kept", {"method_options": {"ridge": "keep"}}),
    "recipe-nostop": ("sparse phase runs all its epochs", {"method_options": {"stop_when_selected": False}}),
    "recipe-sf0.2": ("slower ramp (select_frac 0.2)", {"method_options": {"select_frac": 0.2}}),
    "magnitude-kd": ("reference + distillation", {"method": "magnitude", "distill": True}),
    "random": ("reference: k random groups per scope (seed 0)", {"method": "random"}),
    "random-s1": ("reference: k random groups per scope (seed 1)", {"method": "random",
                                                                    "method_options": {"seed": 1}}),
    "recipe-renorm": ("kept scopes rescaled to their top-k norm", {"method_options": {"ridge": "renorm"}}),
    # One change against ``cancel``: the recipe of stop 17 (ridge "cancel"), measured after the fixes of
    # the step hand-over and the fine-tune's weight decay, before "renorm" became the default.
    "cancel": ("the recipe with ridge cancel (stop 17's default)", {"method_options": CANCEL}),
    "cancel-group": ("prox on the whole group", {"method_options": {**CANCEL, "prox_on": "group"}}),
    "cancel-sf0.6": ("much slower ramp (select_frac 0.6)", {"method_options": {**CANCEL, "select_frac": 0.6}}),
    "cancel-eps0": ("no half-space step (the prox alone zeroes)", {"method_options": {**CANCEL, "eps": 0.0}}),
    "cancel-rewind": ("selection kept, dense weights", {"method_options": CANCEL, "rewind": True}),
    "cancel-lowlr": ("sparse phase at the fine-tune lr", {"method_options": CANCEL, "lr": 0.025,
                                                          "finetune_lr": 0.025}),
    "cancel-group-rewind": ("prox on the whole group, dense weights",
                            {"method_options": {**CANCEL, "prox_on": "group"}, "rewind": True}),
    "cancel-group-lowlr": ("prox on the whole group, fine-tune lr",
                           {"method_options": {**CANCEL, "prox_on": "group"}, "lr": 0.025, "finetune_lr": 0.025}),
}
VGG_KW = {"width": 0.5, "depth": 11}


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--models", default="resnet20,vgg")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--dense-epochs", type=int, default=5)
    p.add_argument("--post-epochs", type=int, default=4)
    p.add_argument("--sparse-epochs", type=int, default=3)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="x86-avx2-ort")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/hwprune-diagnosis"))
    p.add_argument("--tag", default="")
    p.add_argument("--note", default="", help="machine state (busy/quiet) for the report")
    a = p.parse_args(argv)
    bad = [x for x in a.arms.split(",") if x not in ARMS]
    if bad:
        p.error(f"unknown arm(s) {bad}; valid: {', '.join(ARMS)}")
    return a


def kept_norm_ratio(run: Path) -> float:
    """Median over the kept groups of ``||x_G||`` in the masked model after the projection / in the dense model."""
    rd = RunDir(run)
    (sparse, _), (dense, _) = load_model(run / "sparse"), load_model(run / "dense")
    ex = rd.example_input()
    gs_s, gs_d = build_groups(sparse, rd.profile, ex), build_groups(dense, rd.profile, ex)
    keep = gs_s.nonzero()
    return float((gs_s.norms()[keep] / gs_d.norms()[keep].clamp_min(1e-30)).median())


def _epochs(m: Any, batch_size: int) -> str:
    """``sparse+FT`` epochs as optimiser steps / steps per epoch (an early-stopped sparse phase's are partial)."""
    per_epoch = math.ceil(m.splits.train / batch_size)
    return f"{m.steps['sparse'] / per_epoch:.2f}+{m.steps['finetune'] / per_epoch:.2f}"


def run_arm(a: argparse.Namespace, model: str, name: str, dense: Path, out: Path) -> dict[str, Any]:
    """One arm from the shared dense model (cached in ``out/arm.json``)."""
    cache = out / "arm.json"
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    cause, kw = ARMS[name]
    kw = dict(kw)
    sparse = int(kw.pop("sparse", a.sparse_epochs))
    cfg = TrainJobConfig(model=model, model_kwargs=VGG_KW if model == "vgg" else {}, data=a.data,
                         data_dir=a.data_dir, train_limit=a.train_limit or None, profile=a.profile,
                         sparsity=a.sparsity, seed=a.seed, checkpoint=str(dense), dense_epochs=0,
                         epochs=sparse, finetune_epochs=a.post_epochs - sparse, **kw)
    t0 = time.perf_counter()
    m = run_train_job(cfg, out / "run", progress=False).metrics
    row = {"model": model, "arm": name, "cause": cause, "val_dense": m.val_accuracy.dense,
           "val_before_projection": m.val_accuracy.sparse, "val_after_projection": m.val_accuracy.projected,
           "val_final": m.val_accuracy.final, "test_final": m.test_accuracy.final, "test_dense": m.test_accuracy.dense,
           "nonzero_before_projection": m.groups.nonzero_before_projection, "k": m.groups.k,
           "zeroed_by_projection": m.groups.zeroed_by_projection, "zeroed_by": json.dumps(m.groups.zeroed_by),
           "kept_norm_ratio": round(kept_norm_ratio(out / "run"), 3),
           "epochs": _epochs(m, cfg.batch_size), "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(cache, row)
    return row


def dense_model(a: argparse.Namespace, model: str) -> Path:
    """Train (once) the shared dense model; returns its stem."""
    root = a.work_dir / f"{model}-s{a.seed}-n{a.train_limit}-d{a.dense_epochs}" / "dense"
    if not (root / "dense.json").is_file():
        cfg = TrainJobConfig(model=model, model_kwargs=VGG_KW if model == "vgg" else {}, data=a.data,
                             data_dir=a.data_dir, train_limit=a.train_limit or None, profile=a.profile,
                             method="magnitude", seed=a.seed, dense_epochs=a.dense_epochs, epochs=1,
                             finetune_epochs=0)
        run_train_job(cfg, root, progress=False)
    return root / "dense"


COLUMNS = [("model", "model"), ("arm", "arm"), ("cause", "changed"), ("val_before_projection", "val before proj."),
           ("val_after_projection", "val after proj."), ("val_final", "val final"), ("test_final", "test final"),
           ("nonzero_before_projection", "nonzero at end of sparse"), ("k", "k"),
           ("zeroed_by_projection", "removed by projection"), ("zeroed_by", "zeroed by"),
           ("kept_norm_ratio", "kept-group norm / dense"), ("epochs", "sparse+FT"),
           ("seconds", "s")]


def main(argv: list[str] | None = None) -> None:
    """Run every (model, arm), print rows as they finish, write the results files."""
    a = _args(argv)
    torch.set_num_threads(1)
    rows = []
    for model in a.models.split(","):
        dense = dense_model(a, model)
        for name in a.arms.split(","):
            row = run_arm(a, model, name, dense, dense.parent.parent / name)
            rows.append(row)
            print(" | ".join(f"{row[k]}" for k, _ in COLUMNS), flush=True)
    tag = a.tag or f"n{a.train_limit}-s{a.sparsity}"
    md = [f"# WGSEF diagnosis: {a.data} ({a.train_limit or 'all'} training images, 10 % of them validation), "
          f"profile {a.profile}, sparsity {a.sparsity}, seed {a.seed}",
          "", f"Dense {a.dense_epochs} epochs, then {a.post_epochs} epochs for every arm "
          f"({a.sparse_epochs} sparse unless the arm says otherwise). Machine: {a.note or 'not stated'}.", "",
          *md_table(rows, COLUMNS)]
    write_results(RESULTS / f"wgsef_diagnosis-{a.data}-{tag}-cpu-{torch_tag()}", rows, md, vars(a))


if __name__ == "__main__":
    main()
