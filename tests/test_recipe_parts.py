"""Building blocks of the issue-11 WGSEF recipe.

Per-scope prox steps, the ridge-free DC step, the λ continuation, the prox target (gamma/beta part),
BatchNorm recalibration and distillation.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import build_groups
from hwprune.profiles import profile_from_dict
from hwprune.sparsity import wgsef
from hwprune.sparsity.lamcontrol import LamContinuation
from hwprune.sparsity.methods import get_method
from hwprune.sparsity.proxsgd import ProxSGD
from hwprune.sparsity.proxtarget import build_prox_target, norm_affine_params
from hwprune.training.bnrecal import recalibrate_bn
from hwprune.training.distill import DistillTerm

pytestmark = pytest.mark.numerics  # re-run under every ATen CPU capability (make test)


def _profile():
    return profile_from_dict({
        "schema_version": 1, "name": "t", "description": "test",
        "device": {"kind": "cpu", "vendor": "any", "arch": "any"},
        "rules": [{"match": "Conv2d", "granularity": {"kind": "channel_block", "block": 2}, "optional": True}],
        "scope": "per_layer", "weight_mode": "uniform",
    })


class _BNNet(nn.Module):
    """conv-BN-ReLU x2 -> GAP -> Linear on 1x6x6 inputs (8 and 8 channels, blocks of 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _bn_net(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = _BNNet()
    with torch.no_grad():
        for bn in (net.b1, net.b2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net, torch.randn(1, 1, 6, 6)


# ----------------------------------------------------------------------------- per-scope prox step
def test_group_scales_per_scope_lam_matches_scalar_calls() -> None:
    g = torch.Generator().manual_seed(0)
    norms = torch.rand(3, 7, generator=g, dtype=torch.float64) + 0.1
    norms[2, 5:] = 0.0  # padding
    k = torch.tensor([3, 2, 4])
    lam = torch.tensor([0.05, 0.0, 0.7], dtype=torch.float64)
    got = wgsef.group_scales(norms, k, lam)
    for b in range(3):
        want = wgsef.group_scales(norms[b], int(k[b]), float(lam[b]))
        torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-14)
    assert bool((got[1] == 1.0).all())  # lam 0 -> identity for that scope
    with pytest.raises(ValueError):
        wgsef.group_scales(norms[0], 3, lam)  # a tensor lam needs batched norms


# ----------------------------------------------------------------------------- ridge-free DC step
def _linear_problem(m: int = 6):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, m), nn.ReLU(), nn.Linear(m, 2))
    prof = profile_from_dict({
        "schema_version": 1, "name": "t", "description": "t", "device": {"kind": "cpu", "vendor": "a", "arch": "a"},
        "rules": [{"match": "Linear", "granularity": {"kind": "channel"}, "optional": True}],
        "scope": "per_layer", "weight_mode": "uniform"})
    gs = build_groups(net, prof, torch.zeros(1, 4))
    return net, gs


@pytest.mark.parametrize("cancel", [False, True])
def test_dc_step_leaves_k_sparse_points_unshrunk(cancel: bool) -> None:
    net, gs = _linear_problem()
    gs.zero_(torch.arange(3, 6))  # 3 of 6 groups alive, k = 3: a k-sparse point
    before = gs.norms().clone()
    opt = ProxSGD(net, gs, torch.tensor([3]), lr=0.0, lam=0.0, momentum=0.0,
                  ridge="cancel" if cancel else "keep", halfspace=False,
                  controller=LamContinuation(torch.tensor([0.5]), growth=1.5))
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    ratio = gs.norms()[:3] / before[:3]
    want = torch.ones(3, dtype=torch.float64) if cancel else torch.full((3,), 1 / 1.5, dtype=torch.float64)
    torch.testing.assert_close(ratio, want, rtol=1e-6, atol=0.0)  # ridge 1/(1 + tau) only without cancel


def test_dc_step_shrinks_only_the_tail_and_never_expands() -> None:
    net, gs = _linear_problem()
    before = gs.norms().clone()
    order = torch.argsort(before, descending=True)
    opt = ProxSGD(net, gs, torch.tensor([3]), lr=0.0, lam=0.0, momentum=0.0, ridge="cancel", halfspace=False,
                  controller=LamContinuation(torch.tensor([0.3]), growth=1.5))
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    ratio = gs.norms() / before
    assert bool((ratio <= 1.0 + 1e-12).all())
    assert float(ratio[order[-1]]) < 0.9  # the smallest group is squeezed
    assert float(ratio[order[0]]) > float(ratio[order[-1]])


# ----------------------------------------------------------------------------- continuation
def test_continuation_schedule_release_and_state() -> None:
    c = LamContinuation.from_schedule(2, 100, tau0=1e-3, tau_end=1.0, select_frac=0.5)
    k = torch.tensor([2, 2])
    for step in range(50):
        c.advance(torch.tensor([3, 2 if step >= 10 else 3]), k, step)
    assert float(c.tau[0]) == pytest.approx(1.0, rel=1e-9)  # tau_end after select_frac * steps
    assert c.released.tolist() == [False, True] and c.released_at.tolist() == [-1, 10]
    assert c.steps().tolist()[1] == 0.0  # released: no prox (no ridge on the survivors)
    frozen_tau = float(c.tau[1])
    c2 = LamContinuation(torch.tensor([1.0, 1.0]), growth=2.0)
    c2.load_state_dict(c.state_dict())
    c2.advance(torch.tensor([3, 2]), k, 50)
    assert float(c2.tau[1]) == frozen_tau and float(c2.tau[0]) == pytest.approx(c.growth, rel=1e-9)
    with pytest.raises(ValueError):
        LamContinuation(torch.tensor([1.0]), growth=1.0)


# ----------------------------------------------------------------------------- prox target
def test_norm_target_measures_gamma_beta_and_zeroes_whole_groups() -> None:
    net, x = _bn_net()
    gs = build_groups(net, _profile(), x)
    assert norm_affine_params(net) >= {"b1.weight", "b1.bias", "b2.weight", "b2.bias"}
    tgt = build_prox_target(net, gs, "norm")
    assert bool(tgt.has_part.all())
    want = torch.cat([torch.cat([net.b1.weight, net.b2.weight]).view(-1, 2),
                      torch.cat([net.b1.bias, net.b2.bias]).view(-1, 2)], dim=1).double().norm(dim=1)
    torch.testing.assert_close(tgt.norms(gs), want.detach(), rtol=1e-6, atol=1e-7)
    conv_before = net.c1.weight.detach().clone()
    factors = torch.full((gs.num_groups,), 0.5, dtype=torch.float64)
    factors[0] = 0.0
    tgt.scale_(gs, factors)
    assert torch.equal(net.c1.weight[2:], conv_before[2:])  # conv rows untouched by a nonzero factor
    assert bool((net.c1.weight[:2] == 0).all()) and bool((net.b1.weight[:2] == 0).all())  # factor 0: all slices
    assert not bool(gs.nonzero()[0]) and int(gs.nonzero().sum()) == gs.num_groups - 1
    weights_tgt = build_prox_target(net, gs, "weights")
    assert "b1.weight" not in weights_tgt.measured and "c1.weight" in weights_tgt.measured


# ----------------------------------------------------------------------------- BN recalibration
def test_recalibrate_bn_matches_data_statistics_and_restores_state() -> None:
    net, _ = _bn_net()
    g = torch.Generator().manual_seed(1)
    x = 2.0 + 3.0 * torch.randn(64, 1, 6, 6, generator=g)
    net.eval()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert recalibrate_bn(net, [x[:32], x[32:]]) == 2  # cumulative average over both batches
    h = net.c1(x)
    torch.testing.assert_close(net.b1.running_mean, h.mean((0, 2, 3)).detach(), rtol=1e-4, atol=1e-5)
    var = (h[:32].var((0, 2, 3), unbiased=True) + h[32:].var((0, 2, 3), unbiased=True)) / 2  # per-batch, averaged
    torch.testing.assert_close(net.b1.running_var, var.detach(), rtol=1e-4, atol=1e-5)
    assert not net.training and net.b1.momentum == 0.1
    assert all(torch.equal(p, params[n]) for n, p in net.named_parameters())
    assert recalibrate_bn(nn.Linear(3, 2), [x]) == 0
    with pytest.raises(ValueError):
        recalibrate_bn(net, [])


# ----------------------------------------------------------------------------- distillation
def test_distill_term_is_the_tempered_kl_to_the_eval_mode_teacher() -> None:
    net, _ = _bn_net()
    teacher = copy.deepcopy(net)
    x = torch.randn(8, 1, 6, 6)
    kd = DistillTerm(teacher, alpha=0.5, temperature=2.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher_logits = teacher(x)
    net.train()
    out = net(x)
    t = 2.0
    kl = F.kl_div(F.log_softmax(out / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean")
    torch.testing.assert_close(kd(x, out, None), 0.5 * t * t * kl, rtol=1e-5, atol=1e-6)
    net.eval()
    assert float(kd(x, teacher(x), None)) == pytest.approx(0.0, abs=1e-6)  # equal logits: no term
    with pytest.raises(ValueError):
        DistillTerm(teacher, alpha=-1.0)


# ----------------------------------------------------------------------------- options
def test_wgsef_options_defaults_and_validation() -> None:
    m = get_method("wgsef")
    opts = m.parse_options({})
    assert (opts.schedule, opts.prox_on, opts.ridge) == ("continuation", "norm", "renorm")
    assert m.parse_options({"schedule": "constant", "ridge": "keep", "prox_on": "group"}).schedule == "constant"
    for bad in ({"schedule": "fast"}, {"ridge": "none"}, {"tau0": 2.0}, {"select_frac": 0.0}, {"pace": "x"}):
        with pytest.raises(ConfigError):
            m.parse_options(bad)
