"""SSR / AULM math: row proxes, F/Y updates, penalty, ADMM fixed point (SSR.md section 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import GroupSet, build_groups
from hwprune.groups.topk import topk_mask
from hwprune.profiles import load_profile
from hwprune.sparsity.ssr import (
    AULMConfig,
    AULMState,
    calibrate_multipliers,
    group_index_map,
    row_prox_l20,
    row_prox_l21,
    survive_mask,
    survivor_ratio,
)

pytestmark = pytest.mark.numerics  # re-run under every ATen CPU capability (make test)

ATOL = 1e-10
RTOL = 1e-8


def _mlp() -> tuple[nn.Module, GroupSet]:
    """Linear(4,3)-Linear(3,5)-Linear(5,2) in float64: groups = 3 + 5 output rows (weight row + bias)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    gs = build_groups(m, load_profile("generic-channel"), torch.randn(2, 4, dtype=torch.float64))
    assert gs.num_groups == 8 and gs.scope_sizes.tolist() == [3, 5]
    return m, gs


def _rows(m: nn.Module) -> torch.Tensor:
    """(8, max_cols) group rows [W_i, b_i] of the two grouped layers, zero-padded (float64)."""
    out = torch.zeros(8, 5, dtype=torch.float64)
    out[:3, :5] = torch.cat([m[0].weight, m[0].bias[:, None]], 1).detach()
    out[3:, :4] = torch.cat([m[2].weight, m[2].bias[:, None]], 1).detach()
    return out


def _set_rows_(m: nn.Module, rows: torch.Tensor) -> None:
    with torch.no_grad():
        m[0].weight.copy_(rows[:3, :4])
        m[0].bias.copy_(rows[:3, 4])
        m[2].weight.copy_(rows[3:, :3])
        m[2].bias.copy_(rows[3:, 3])


def _state_rows(d: dict[str, torch.Tensor]) -> torch.Tensor:
    out = torch.zeros(8, 5, dtype=torch.float64)
    out[:3, :5] = torch.cat([d["0.weight"], d["0.bias"][:, None]], 1)
    out[3:, :4] = torch.cat([d["2.weight"], d["2.bias"][:, None]], 1)
    return out


def _soft(rows: torch.Tensor, thr: float) -> torch.Tensor:
    n = rows.norm(dim=1, keepdim=True)
    return rows * torch.clamp(n - thr, min=0) / torch.where(n > 0, n, torch.ones_like(n))


# ---------------------------------------------------------------------------- row proxes
def test_l21_hand_values() -> None:
    n = torch.tensor([3.0, 0.5, 0.0, 1.0])
    assert torch.allclose(row_prox_l21(n, 1.0, 1.0), torch.tensor([2 / 3, 0, 0, 0], dtype=torch.float64))
    assert torch.allclose(row_prox_l21(n, 1.0, 2.0), torch.tensor([2.5 / 3, 0, 0, 0.5], dtype=torch.float64))
    lam = torch.tensor([0.0, 0.0, 1.0, 2.0])  # per-group lambda
    assert torch.allclose(row_prox_l21(n, lam, 1.0), torch.tensor([1, 1, 0, 0], dtype=torch.float64))


def test_l21_optimality_conditions() -> None:
    torch.manual_seed(1)
    T = torch.randn(200, 7, dtype=torch.float64) * torch.rand(200, 1, dtype=torch.float64) * 3
    lam, rho = 1.3, 0.7
    F = T * row_prox_l21(T.norm(dim=1), lam, rho)[:, None]
    tn, fn = T.norm(dim=1), F.norm(dim=1)
    zero = fn == 0
    assert torch.equal(zero, tn <= lam / rho)
    assert 0 < int(zero.sum()) < 200
    cos = (F * T).sum(1)[~zero] / (fn[~zero] * tn[~zero])
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-12)  # F parallel to T
    lhs = rho * (T - F)[~zero]
    rhs = lam * F[~zero] / fn[~zero, None]
    assert torch.allclose(lhs, rhs, atol=ATOL, rtol=RTOL)
    # brute force along T: a in [0, 1] minimising lam*a*||T|| + rho/2 (1-a)^2 ||T||^2
    a = torch.linspace(0, 1, 20001, dtype=torch.float64)
    obj = lam * a[None] * tn[:, None] + rho / 2 * (1 - a[None]) ** 2 * tn[:, None] ** 2
    best = a[obj.argmin(1)]
    assert torch.allclose(best, row_prox_l21(tn, lam, rho), atol=1e-4)


def test_l20_hand_values_and_brute_force() -> None:
    lam, rho = 0.5, 1.0  # keep iff ||T||^2 > 1
    n = torch.tensor([0.9, 1.0, 1.1, 0.0, 5.0])
    assert row_prox_l20(n, lam, rho).tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    torch.manual_seed(2)
    tn = torch.rand(300, dtype=torch.float64) * 2.5
    lam, rho = 0.8, 1.7
    s = row_prox_l20(tn, lam, rho)
    grid = torch.linspace(-0.5, 1.5, 4001, dtype=torch.float64)
    a = torch.cat([grid, torch.tensor([0.0, 1.0], dtype=torch.float64)])  # 0 and 1 exactly
    obj = lam * (a[None] != 0) + rho / 2 * (1 - a[None]) ** 2 * tn[:, None] ** 2
    got = lam * (s != 0) + rho / 2 * (1 - s) ** 2 * tn**2
    assert torch.allclose(got, obj.min(1).values, atol=1e-12)  # the returned row is the global minimiser
    keep_obj, zero_obj = lam, rho / 2 * tn**2
    assert torch.allclose(got, torch.minimum(torch.full_like(tn, keep_obj), zero_obj))
    assert set(s.tolist()) == {0.0, 1.0}


def test_survivor_ratio_matches_prox() -> None:
    torch.manual_seed(3)
    tn = torch.rand(100, dtype=torch.float64) * 3
    lam = torch.rand(100, dtype=torch.float64) + 0.1
    for variant, prox in (("l21", row_prox_l21), ("l20", row_prox_l20)):
        r = survivor_ratio(variant, tn, lam, 1.5)
        for c in (0.3, 1.0, 2.7):
            assert torch.equal(prox(tn, c * lam, 1.5) > 0, r > c)


def test_prox_and_config_validation() -> None:
    with pytest.raises(ConfigError):
        row_prox_l21(torch.ones(2), 1.0, 0.0)
    with pytest.raises(ConfigError):
        row_prox_l20(torch.ones(2), -1.0, 1.0)
    with pytest.raises(ConfigError, match="variant"):
        AULMConfig(variant="l1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="joint"):
        AULMConfig(mode="blockwise")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="inner_steps"):
        AULMConfig(inner_steps=0)


# ---------------------------------------------------------------------------- GroupSet helpers
def test_group_index_map_matches_apply_mask() -> None:
    m, gs = _mlp()
    params = dict(m.named_parameters())
    gid = group_index_map(gs, params)
    assert set(gid) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert gid["0.weight"][:, 0].tolist() == [0, 1, 2] and gid["2.bias"].tolist() == [3, 4, 5, 6, 7]
    keep = torch.tensor([True, False, True, False, False, True, True, False])
    t = {n: torch.ones_like(p) for n, p in params.items() if n in gid}
    gs.apply_mask_(t, keep)
    for n in t:
        assert torch.equal(t[n] == 0, ~keep[gid[n]])


def test_topk_mask_and_calibration_per_scope() -> None:
    _, gs = _mlp()
    score = torch.tensor([0.1, 0.9, 0.5, 3.0, 1.0, 2.0, 0.2, 2.5], dtype=torch.float64)
    k = torch.tensor([1, 3])
    assert topk_mask(gs, k, score).tolist() == [False, True, False, True, False, True, False, True]
    c = calibrate_multipliers(gs, score, k)
    assert ((score > c[gs.scope_index]) == topk_mask(gs, k, score)).all()
    tie = torch.tensor([1.0, 1.0, 0.5, 1, 1, 1, 1, 1], dtype=torch.float64)  # ties: count >= k, never < k
    c = calibrate_multipliers(gs, tie, k)
    counts = gs.to_padded(((tie > c[gs.scope_index])).double()).sum(1)
    assert counts.tolist() == [2.0, 5.0]


def test_calibration_keeps_a_margin_on_both_sides() -> None:
    """The multiplier lies strictly inside (r_(k+1), r_(k)), far from both: no decision rests on one ulp."""
    _, gs = _mlp()
    k = torch.tensor([2, 2])
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        ratio = torch.rand(gs.num_groups, generator=g, dtype=torch.float64) * 10 ** (seed % 7 - 3)
        c = calibrate_multipliers(gs, ratio, k)
        for s in range(gs.num_scopes):
            r = torch.sort(ratio[gs.scope_index == s], descending=True).values
            gap = float(r[1] - r[2])
            assert float(r[1]) - float(c[s]) > 0.25 * gap and float(c[s]) - float(r[2]) > 0.25 * gap
        assert survive_mask(gs, ratio, c).tolist() == topk_mask(gs, k, ratio).tolist()
        # the same decisions survive a perturbation of every ratio by a few ulps either way
        wobble = ratio * (1 + 4e-16 * torch.randn(ratio.shape, generator=g, dtype=torch.float64))
        assert survive_mask(gs, wobble, c).tolist() == topk_mask(gs, k, ratio).tolist()


def test_calibrated_f_step_zeroes_exactly_the_rows_the_ratio_drops() -> None:
    """The F-step under calibrated multipliers keeps exactly k rows per scope, for many random states."""
    for seed in range(20):
        m, gs = _mlp()
        torch.manual_seed(seed)
        for p in m.parameters():
            p.data.normal_()
        k = torch.tensor([1, 3])
        for variant in ("l21", "l20"):
            state = AULMState(m, gs, AULMConfig(variant=variant, lam=0.3, rho=1.7))
            ratio = survivor_ratio(variant, state.t_norms(), state.lam_g, state.rho)
            c = calibrate_multipliers(gs, ratio, k)
            state.f_step(c, survive_mask(gs, ratio, c))
            assert (~state.zero_rows()).to(torch.long).tolist() == topk_mask(gs, k, ratio).to(torch.long).tolist()


# ---------------------------------------------------------------------------- AULM state
def test_f_y_steps_by_hand() -> None:
    m, gs = _mlp()
    lam, rho = 0.6, 2.0
    st = AULMState(m, gs, AULMConfig(variant="l21", lam=lam, rho=rho))
    W0 = _rows(m)
    st.f_step()
    F1 = _soft(W0, lam / rho)  # Y = 0: T = W
    assert torch.allclose(_state_rows(st.F), F1, atol=ATOL)
    st.y_step()
    Y1 = rho * (W0 - F1)
    assert torch.allclose(_state_rows(st.Y), Y1, atol=ATOL)
    W1 = W0 * 0.8 + 0.05
    W1[3:, 4] = 0.0  # the second layer's rows have 4 entries: keep the padding column zero
    _set_rows_(m, W1)
    st.f_step()
    F2 = _soft(W1 + Y1 / rho, lam / rho)
    assert torch.allclose(_state_rows(st.F), F2, atol=ATOL)
    st.y_step()
    assert torch.allclose(_state_rows(st.Y), Y1 + rho * (W1 - F2), atol=ATOL)
    assert st.iterations == 2
    assert torch.equal(st.zero_rows(), F2.norm(dim=1) == 0)
    assert st.residual() == pytest.approx(float((W1 - F2).norm()), rel=1e-12)
    # penalty: value and gradient rho (W - F + Y/rho) on the grouped elements only
    Y2 = _state_rows(st.Y)
    pen = st.penalty(m)
    assert float(pen.detach()) == pytest.approx(rho / 2 * float(((W1 - F2 + Y2 / rho) ** 2).sum()), rel=1e-12)
    pen.backward()
    g = torch.zeros(8, 5, dtype=torch.float64)
    g[:3] = torch.cat([m[0].weight.grad, m[0].bias.grad[:, None]], 1)
    g[3:, :4] = torch.cat([m[2].weight.grad, m[2].bias.grad[:, None]], 1)
    assert torch.allclose(g, rho * (W1 - F2 + Y2 / rho), atol=ATOL)
    assert m[4].weight.grad is None  # the ungrouped classifier is not in the penalty


def test_l20_state_and_layer_restriction() -> None:
    m, gs = _mlp()
    st = AULMState(m, gs, AULMConfig(variant="l20", lam=0.2, rho=1.0))
    st.set_active(gs.scope_index == 1)  # layerwise: only the second layer's rows
    W = _rows(m)
    st.f_step()
    F = _state_rows(st.F)
    keep = W.norm(dim=1) ** 2 > 0.4
    assert torch.allclose(F[3:], W[3:] * keep[3:, None]) and torch.equal(F[:3], W[:3])
    st.y_step()
    assert torch.equal(_state_rows(st.Y)[:3], torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="scope"):
        AULMState(m, gs, AULMConfig(scope_multipliers=(1.0,)))


def test_admm_fixed_point_is_group_soft_threshold() -> None:
    """Loss 1/2 ||W - W0||^2 with the exact W-step: AULM-L2,1 converges to soft-threshold(W0, lam)."""
    m, gs = _mlp()
    W0 = _rows(m) * 2.0
    norms = W0.norm(dim=1)
    srt = norms.sort().values
    lam, rho = float(srt[3] + srt[4]) / 2, 2.0  # exactly four rows must end at zero; rho != 1 on purpose
    st = AULMState(m, gs, AULMConfig(variant="l21", lam=lam, rho=rho))
    _set_rows_(m, W0)
    residuals = []
    for _ in range(300):
        st.f_step()
        residuals.append(st.residual())  # ||W - F|| after the F-step
        st.y_step()
        target = _state_rows(st.F) - _state_rows(st.Y) / rho
        _set_rows_(m, (W0 + rho * target) / (1 + rho))  # argmin 1/2||W-W0||^2 + rho/2||W - F + Y/rho||^2
    expected = _soft(W0, lam)
    assert torch.allclose(_rows(m), expected, atol=1e-7)
    assert torch.allclose(_state_rows(st.F), expected, atol=1e-7)
    assert torch.equal(st.zero_rows(), expected.norm(dim=1) == 0) and int(st.zero_rows().sum()) == 4
    assert residuals[-1] < 1e-7 < residuals[0]
