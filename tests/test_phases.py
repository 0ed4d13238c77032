"""The phases engine: PhaseRunner, sparsify's sequence, its hooks, and the compact fine-tune."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hwprune.groups import build_groups
from hwprune.groups.groupset import GroupSet
from hwprune.profiles import load_profile
from hwprune.sparsity.proxsgd import ProxSGD
from hwprune.surgery.remove import remove_zero_groups
from hwprune.training.phases import Hooks, Phase, PhaseContext, PhaseRunner, SparsifySpec, sparsify
from tests.tiny_models import TINY_MODELS, example_input

pytestmark = pytest.mark.numerics  # compares the compact and masked fine-tunes to a tolerance

PROFILE = load_profile("generic-channel")
MATCH_ATOL = 1e-4  # compact vs masked fine-tune after 8 SGD steps (float32 sums in another order)


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return TensorDataset(x, (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long())


def _runner(tmp: Path | None = None) -> PhaseRunner:
    return PhaseRunner(PhaseContext(train_data=_data(), val_data=_data(32, seed=1), batch_size=16, seed=3,
                                    progress=False, log_path=tmp / "log.jsonl" if tmp else None))


def _model() -> tuple[nn.Module, GroupSet]:
    model = TINY_MODELS["chain"](seed=0).train()
    return model, build_groups(model, PROFILE, example_input("chain"))


def _surgery(masked: nn.Module, groups: GroupSet) -> tuple[nn.Module, GroupSet, object]:
    compact, plan = remove_zero_groups(masked, groups, example_input("chain"))
    return compact, build_groups(compact, PROFILE, example_input("chain")), plan


def _spec(surgery: bool, **kw: object) -> SparsifySpec:
    return SparsifySpec(sparse=None, finetune=Phase("finetune", 2, 0.05), surgery=_surgery if surgery else None,
                        **kw)  # type: ignore[arg-type]


def test_compact_finetune_matches_the_masked_one() -> None:
    """Fine-tuning the compact model is the masked fine-tune, at a fraction of the width."""
    base, gs = _model()
    k = gs.k_for_sparsity(0.5)
    results = []
    for surgery in (True, False):
        model = copy.deepcopy(base)
        groups = build_groups(model, PROFILE, example_input("chain"))
        results.append(sparsify(_runner(), model, groups, k, _spec(surgery)))
    compact, masked = results
    n_compact = sum(p.numel() for p in compact.model.parameters())
    assert n_compact < sum(p.numel() for p in masked.model.parameters())
    assert compact.zeroed_by_projection == masked.zeroed_by_projection == int((gs.scope_sizes - k).sum())
    x = _data(8, seed=5).tensors[0]
    compact.model.eval()
    masked.model.eval()
    with torch.no_grad():
        diff = (compact.model(x) - masked.model(x)).abs().max().item()
    assert diff < MATCH_ATOL
    untrained = dict(_surgery(*_projected(base, k))[0].named_parameters())  # the compact model at surgery time
    trained = dict(compact.model.named_parameters())
    assert trained.keys() == untrained.keys()
    assert not all(torch.equal(trained[n], untrained[n]) for n in trained)  # the fine-tune trained the compact one


def _projected(base: nn.Module, k: torch.Tensor) -> tuple[nn.Module, GroupSet]:
    from hwprune.sparsity.selection import project_to_k_

    model = copy.deepcopy(base)
    groups = build_groups(model, PROFILE, example_input("chain"))
    project_to_k_(groups, k)
    return model, groups


def test_hooks_and_extra_loss_are_one_line_additions(tmp_path: Path) -> None:
    model, gs = _model()
    calls: list[tuple[str, int]] = []

    def after_projection(m: nn.Module, runner: PhaseRunner) -> None:
        calls.append(("projection", sum(p.numel() for p in m.parameters())))
        assert len(list(runner.train_batches(2))) == 2  # e.g. BatchNorm recalibration batches

    def after_surgery(m: nn.Module, runner: PhaseRunner) -> None:
        calls.append(("surgery", sum(p.numel() for p in m.parameters())))

    teacher = copy.deepcopy(model).eval()

    def distill(x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x).softmax(dim=1)
        return 0.0 * nn.functional.kl_div(out.log_softmax(dim=1), target, reduction="batchmean") + 0.125

    spec = _spec(True, hooks=Hooks(after_projection=[after_projection], after_surgery=[after_surgery]),
                 finetune_batch_loss=distill)
    res = sparsify(_runner(tmp_path), model, gs, gs.k_for_sparsity(0.5), spec)
    assert [c[0] for c in calls] == ["projection", "surgery"] and calls[1][1] < calls[0][1]
    import json

    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["finetune", "finetune"]
    assert all(r["penalty"] == pytest.approx(0.125) and "val_acc" in r for r in log)
    assert res.val_final is not None and res.seconds["finetune"] > 0


def test_masked_finetune_keeps_zero_groups_zero_and_skips_empty_phases() -> None:
    model, gs = _model()
    k = gs.k_for_sparsity(0.5)
    spec = SparsifySpec(sparse=Phase("sparse", 0, 0.05), finetune=Phase("finetune", 1, 0.05))
    res = sparsify(_runner(), model, gs, k, spec)
    assert res.model is model and res.nonzero_before_projection == gs.scope_sizes.tolist()
    assert gs.nonzero_per_scope().tolist() == k.tolist()  # still exactly k after the fine-tune


def test_sparse_phase_runs_the_given_optimizer() -> None:
    model, gs = _model()
    k = gs.k_for_sparsity(0.5)
    opt = ProxSGD(model, gs, k, lr=0.05, lam=5.0, eps=0.9, hs_start=0)
    runner = _runner()
    spec = SparsifySpec(sparse=Phase("sparse", 2, 0.05, optimizer=opt), finetune=Phase("finetune", 0, 0.05),
                        finalize=lambda: {"frozen": int(opt.frozen.sum())})
    res = sparsify(runner, model, gs, k, spec)
    assert opt.step_count == runner.steps(2) == 8
    assert res.info["frozen"] > 0  # the prox's half-space step zeroed groups itself
    assert res.zeroed_by_projection == sum(res.nonzero_before_projection) - int(k.sum())


class _StopAfter:
    """A sparse-phase callback whose selection is 'done' after ``n`` optimiser steps."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def on_step_end(self, step: int, epoch: int) -> None:
        self.seen = step + 1

    def stop_requested(self) -> bool:
        return self.seen >= self.n


def test_an_early_stopped_sparse_phase_hands_its_remaining_steps_to_the_finetune(tmp_path: Path) -> None:
    model, gs = _model()
    k = gs.k_for_sparsity(0.5)
    runner = _runner(tmp_path)  # 64 images / batch 16: 4 steps per epoch
    opt = ProxSGD(model, gs, k, lr=0.05, lam=0.0)
    spec = SparsifySpec(sparse=Phase("sparse", 2, 0.05, optimizer=opt, callbacks=(_StopAfter(3),)),
                        finetune=Phase("finetune", 1, 0.05))
    res = sparsify(runner, model, gs, k, spec)
    assert opt.step_count == 3 and res.steps == {"sparse": 3, "finetune": 4 + 5}  # 3 + 9 = 3 epochs of 4 steps
    assert res.epochs == {"sparse": 1, "finetune": 3}  # epochs begun: the last fine-tune epoch is partial
    import json

    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in log] == [("sparse", 3), ("finetune", 4), ("finetune", 8),
                                                      ("finetune", 9)]


def test_the_finetune_decays_every_weight_like_a_plain_sgd_finetune() -> None:
    from hwprune.training.phases import masked_optimizer

    model, gs = _model()
    opt = masked_optimizer(model, gs, lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert {g["weight_decay"] for g in opt.param_groups} == {5e-4}  # grouped tensors too (they were 0)
