"""Phase 2: N:M sparsity on the compact model (METHOD.md section 7.3, DESIGN.md section 1).

Each block of M consecutive weights along the reduction dimension is its own SEF scope with
``k = N``: prox-SGD with the batched SEF prox and half-space zeroing, then a hard projection to the
N largest magnitudes per block, then a fine-tune with the mask fixed (the same engine and sequence
as the train job: :func:`hwprune.training.phases.sparsify`). Its settings are the run's
``PipelineOptions`` (``nm_*``). The result stays a mask (dense zeros) for TensorRT's sparse tensor
cores; ``check_nm_masks`` verifies the pattern.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hwprune.base.errors import NumericalMismatchError
from hwprune.groups import build_groups
from hwprune.groups.groupset import GroupSet
from hwprune.sparsity.methods.wgsef_method import halfspace_start
from hwprune.sparsity.proxsgd import ProxOptions, ProxSGD
from hwprune.training.artifacts import ByStage, NMSummary
from hwprune.training.loop import evaluate
from hwprune.training.phases import EVAL_BATCH, Phase, PhaseContext, PhaseRunner, SparsifySpec, sparsify
from hwprune.training.runconfig import PipelineOptions
from hwprune.training.rundir import RunDir

__all__ = ["run_nm_phase", "nm_budget", "check_nm_masks", "onnx_nm_weight_names"]


def nm_budget(groupset: GroupSet) -> torch.Tensor:
    """K per scope (= N of the block's N:M pattern), shape (S,)."""
    k = getattr(groupset, "scope_k", None)
    if k is not None:
        return torch.as_tensor(k, dtype=torch.long)
    raise NumericalMismatchError("GroupSet of phase 'nm' does not expose its per-block N (scope_k)")


def check_nm_masks(groupset: GroupSet, k: torch.Tensor) -> dict[str, int]:
    """Verify every block has at most N nonzeros; raises listing the violating blocks' count."""
    nz = groupset.nonzero_per_scope()
    bad = nz > k
    if bool(bad.any()):
        raise NumericalMismatchError(f"{int(bad.sum())} of {len(k)} N:M blocks have more than N nonzeros",
                                     [{"blocks_violating": int(bad.sum())}])
    return {"blocks": int(len(k)), "max_nonzero_per_block": int(nz.max()) if len(nz) else 0}


def _layer_names(groupset: GroupSet) -> list[str]:
    return sorted({n.rsplit(".", 1)[0] for n in groupset.param_names})


def run_nm_phase(model: nn.Module, rd: RunDir, opts: PipelineOptions) -> NMSummary:
    """Train ``model`` (the run's compact model, in place) to the profile's N:M pattern.

    The sequence of :func:`hwprune.training.phases.sparsify`: ``nm_sparse`` (batched SEF prox,
    half-space step from ``opts.nm_hs_frac`` of its steps) -> projection to N per block ->
    ``nm_finetune`` with the mask fixed; validation accuracy after each, test accuracy once at the end.
    """
    job = rd.train_config
    bundle = rd.data()
    gs = build_groups(model, rd.profile, rd.example_input(), phase="nm")
    k = nm_budget(gs)
    runner = PhaseRunner(PhaseContext(train_data=bundle.train, val_data=bundle.val, batch_size=job.batch_size,
                                      momentum=job.momentum, weight_decay=job.weight_decay, seed=job.seed,
                                      device=job.device, progress=False, log_path=rd.log_path))
    val_before = runner.val_accuracy(model)
    lr, ft_lr = opts.nm_learning_rates(job.lr)
    opt = ProxSGD(model, gs, k, ProxOptions(
        lr=lr, lam=opts.nm_lam, momentum=job.momentum, weight_decay=job.weight_decay, eps=opts.nm_eps,
        hs_start=halfspace_start(opts.nm_hs_frac, runner.steps(max(1, opts.nm_epochs)))))
    spec = SparsifySpec(sparse=Phase("nm_sparse", opts.nm_epochs, lr, optimizer=opt, seed_offset=1),
                        finetune=Phase("nm_finetune", opts.nm_epochs, ft_lr, seed_offset=1))
    res = sparsify(runner, model, gs, k, spec)
    check = check_nm_masks(gs, k)
    n = int(k.max()) if len(k) else 0
    m = int(gs.scope_sizes.max()) if len(k) else 0
    return NMSummary(pattern=f"{n}:{m}", n=n, m=m, layers=_layer_names(gs), param_names=list(gs.param_names),
                     val_accuracy=ByStage(dense=val_before, sparse=res.val_sparse, projected=res.val_projected,
                                          final=res.val_final),
                     test_accuracy=evaluate(model, bundle.test, batch_size=EVAL_BATCH)["accuracy"],
                     zeroed_by_projection=res.zeroed_by_projection, **check)


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
