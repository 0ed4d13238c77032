"""Phase 2: N:M sparsity on the compact model (METHOD.md section 7.3, DESIGN.md section 1).

Each block of M consecutive weights along the reduction dimension is its own SEF scope with
``k = N``: prox-SGD with the batched SEF prox and half-space zeroing, then a hard projection to the
N largest magnitudes per block, then a fine-tune with the mask fixed. The result stays a mask
(dense zeros) for TensorRT's sparse tensor cores; ``check_nm_masks`` verifies the pattern.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.base.errors import NumericalMismatchError
from hwprune.groups import GroupSet, build_groups
from hwprune.profiles import HardwareProfile
from hwprune.sparsity.proxsgd import ProxSGD, project_to_k_
from hwprune.training.config import TrainJobConfig
from hwprune.training.loop import evaluate, fit
from hwprune.training.schedule import TrainConfig

__all__ = ["run_nm_phase", "nm_budget", "check_nm_masks", "onnx_nm_weight_names"]


def nm_budget(groupset: GroupSet) -> torch.Tensor:
    """K per scope (= N of the block's N:M pattern), shape (S,)."""
    k = getattr(groupset, "scope_k", None)
    if k is not None:
        return torch.as_tensor(k, dtype=torch.long)
    raise NumericalMismatchError("GroupSet of phase 'nm' does not expose its per-block N (scope_k)")


def check_nm_masks(groupset: GroupSet, k: torch.Tensor) -> dict[str, Any]:
    """Verify every block has at most N nonzeros; raises listing the violating blocks' count."""
    nz = groupset.nonzero_per_scope()
    bad = nz > k
    if bool(bad.any()):
        raise NumericalMismatchError(f"{int(bad.sum())} of {len(k)} N:M blocks have more than N nonzeros",
                                     [{"blocks_violating": int(bad.sum())}])
    return {"blocks": int(len(k)), "max_nonzero_per_block": int(nz.max()) if len(nz) else 0}


def _layer_names(groupset: GroupSet) -> list[str]:
    return sorted({n.rsplit(".", 1)[0] for n in groupset.param_names})


def run_nm_phase(model: nn.Module, profile: HardwareProfile, bundle: Any, cfg: TrainJobConfig, *, epochs: int,
                 lam: float, run_dir: Path | None = None) -> dict[str, Any]:
    """Train ``model`` (in place) to the profile's N:M pattern; returns a summary dict."""
    example = bundle.train[0][0].unsqueeze(0)
    gs = build_groups(model, profile, example, phase="nm")
    k = nm_budget(gs)
    acc0 = evaluate(model, bundle.test, batch_size=256)["accuracy"]
    ecfg = TrainConfig(epochs=max(1, epochs), batch_size=cfg.batch_size, lr=cfg.lr / 2, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, seed=cfg.seed + 1, device=cfg.device, progress=False)
    log_path = Path(run_dir) / "train_log.jsonl" if run_dir else None
    steps = ecfg.epochs * -(-len(bundle.train) // cfg.batch_size)
    if epochs > 0:
        opt = ProxSGD(model, gs, k, lr=ecfg.lr, lam=lam, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                      eps=cfg.eps, hs_start=int(0.3 * steps))
        fit(model, bundle.train, opt, ecfg, eval_data=bundle.test, log_path=log_path, phase="nm_sparse")
    projected = int(project_to_k_(gs, k).sum())
    acc_proj = evaluate(model, bundle.test, batch_size=256)["accuracy"]
    if epochs > 0:
        opt = ProxSGD(model, gs, k, lr=ecfg.lr / 2, lam=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                      halfspace=False)
        opt.freeze_(torch.nonzero(~gs.nonzero()).flatten())
        fit(model, bundle.train, opt, ecfg, eval_data=bundle.test, log_path=log_path, phase="nm_finetune")
    check = check_nm_masks(gs, k)
    acc = evaluate(model, bundle.test, batch_size=256)["accuracy"]
    n = int(k.max()) if len(k) else 0
    m = int(gs.scope_sizes.max()) if len(k) else 0
    return {"pattern": f"{n}:{m}", "n": n, "m": m, "layers": _layer_names(gs), "param_names": list(gs.param_names),
            "accuracy_before": acc0, "accuracy_after_projection": acc_proj, "accuracy": acc,
            "zeroed_by_projection": projected, **check}


def onnx_nm_weight_names(onnx_path: Path, model: nn.Module, param_names: list[str]) -> list[str]:
    """ONNX initializers that hold the N:M-masked weights (matched by shape and zero pattern).

    Exporters rename (and BN-fold) weights, but folding scales output channels, so the zero
    pattern of an N:M mask survives; each masked parameter must be found exactly once.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    params = dict(model.named_parameters())
    found: list[str] = []
    missing: list[str] = []
    for pname in param_names:
        mask = (params[pname].detach().cpu().numpy() == 0)
        hits = [n for n, a in inits.items() if a.shape == mask.shape and np.array_equal(a == 0, mask)]
        if hits:
            found.append(hits[0])
        else:
            missing.append(pname)
    if missing:
        raise NumericalMismatchError(f"N:M weights not found in {onnx_path}: {missing}", [{"missing": missing}])
    return found
