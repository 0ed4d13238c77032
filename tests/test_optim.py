"""ProxSGD: SGD equivalence at lam=0, state round trip, exact-k convergence, projection, budget cap."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from hwprune.groups import build_groups
from hwprune.profiles import profile_from_dict
from hwprune.sparsity.proxsgd import ProxSGD
from hwprune.sparsity.selection import k_per_scope, project_to_k_, scope_report

pytestmark = pytest.mark.numerics  # re-run under every ATen CPU capability (make test)

ATOL = 1e-6  # float32 round-off between two SGD implementations
RTOL = 1e-5


def _profile(scope: str = "per_layer", weight_mode: str = "uniform"):
    return profile_from_dict({
        "schema_version": 1, "name": "t", "description": "test", "device": {"kind": "cpu", "vendor": "any",
                                                                             "arch": "any"},
        "rules": [{"match": "Linear", "granularity": {"kind": "channel"}, "optional": True},
                  {"match": "Conv2d", "granularity": {"kind": "channel"}, "optional": True}],
        "scope": scope, "weight_mode": weight_mode,
    })


class _Net(nn.Module):
    def __init__(self, d_in: int = 10, hidden: int = 24, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.fc = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.fc1(x)))


def _data(n: int = 256, d_in: int = 10, d_out: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    teacher = _Net(d_in, 4, d_out)
    with torch.no_grad():
        y = teacher(x)
    return x, y


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_lam_zero_matches_torch_sgd() -> None:
    torch.manual_seed(0)
    a = _Net()
    b = copy.deepcopy(a)
    x, y = _data()
    gs = build_groups(a, _profile(), x[:1])
    opt_a = ProxSGD(a, gs, gs.k_for_sparsity(0.5), lr=0.05, lam=0.0, momentum=0.9, weight_decay=1e-3,
                    grouped_weight_decay=1e-3, halfspace=False)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(20):
        _step(a, opt_a, x, y)
        _step(b, opt_b, x, y)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=ATOL, rtol=RTOL, msg=f"parameter {n} differs")


def test_state_dict_round_trip_including_frozen() -> None:
    torch.manual_seed(0)
    model = _Net()
    x, y = _data()
    gs = build_groups(model, _profile(), x[:1])
    k = gs.k_for_sparsity(0.5)
    opt = ProxSGD(model, gs, k, lr=0.05, lam=0.5, hs_start=0)
    for _ in range(5):
        _step(model, opt, x, y)
    opt.freeze_([0, 3])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    clone = copy.deepcopy(model)
    gs2 = build_groups(clone, _profile(), x[:1])
    opt2 = ProxSGD(clone, gs2, gs2.k_for_sparsity(0.9), lr=0.05, lam=0.0)
    opt2.load_state_dict(state)
    assert torch.equal(opt2.frozen, opt.frozen) and bool(opt2.frozen[[0, 3]].all())
    assert opt2.step_count == opt.step_count and torch.equal(opt2.k, k) and opt2.lam == opt.lam
    _step(model, opt, x, y)
    _step(clone, opt2, x, y)
    for (n, pa), (_, pb) in zip(model.named_parameters(), clone.named_parameters(), strict=True):
        assert torch.equal(pa, pb), f"{n} diverged after loading the optimizer state"


def test_reaches_exactly_k_nonzero_groups_with_halfspace_and_freezing() -> None:
    torch.manual_seed(1)
    model = _Net(hidden=24)
    x, y = _data(n=512)
    gs = build_groups(model, _profile(), x[:1])
    k = torch.tensor([6])
    assert gs.num_scopes == 1 and gs.num_groups == 24
    opt = ProxSGD(model, gs, k, lr=0.05, lam=0.5, momentum=0.9, eps=0.05, hs_start=100)
    counts = []
    for _ in range(600):
        _step(model, opt, x, y)
        counts.append(int(gs.nonzero().sum()))
    assert counts[-1] == 6, counts[::50]
    zero = ~gs.nonzero()
    assert bool((gs.norms()[zero] == 0).all())  # exact zeros, not small values
    assert int(opt.frozen.sum()) == 24 - 6
    rep = scope_report(gs, k)
    assert rep == [{"name": gs.scope_names[0], "total": 24, "k": 6, "nonzero": 6}]


def test_without_freezing_count_does_not_settle_at_k() -> None:
    """METHOD.md section 6.2: without freezing, killed groups come back through the gradient step."""
    torch.manual_seed(1)
    model = _Net(hidden=24)
    x, y = _data(n=512)
    gs = build_groups(model, _profile(), x[:1])
    opt = ProxSGD(model, gs, torch.tensor([6]), lr=0.05, lam=0.5, momentum=0.9, hs_start=100, freeze=False)
    for _ in range(300):
        _step(model, opt, x, y)
    assert int(gs.nonzero().sum()) > 6


def test_halfspace_never_drops_a_scope_below_k() -> None:
    torch.manual_seed(2)
    model = _Net(hidden=16)
    x, y = _data()
    gs = build_groups(model, _profile(), x[:1])
    k = torch.tensor([12])
    # eps close to 1 makes the half-space test fire on almost every shrinking group
    opt = ProxSGD(model, gs, k, lr=0.05, lam=2.0, eps=0.95, hs_start=0)
    for _ in range(50):
        _step(model, opt, x, y)
        assert int(gs.nonzero().sum()) >= 12


def test_project_to_k_keeps_top_norm_over_sqrt_d() -> None:
    torch.manual_seed(0)
    model = _Net(hidden=8)
    x, _ = _data()
    gs = build_groups(model, _profile(), x[:1])
    with torch.no_grad():
        scale = torch.arange(1, 9, dtype=torch.float32).unsqueeze(1)
        model.fc1.weight.copy_(scale.expand(8, 10) / 10)
        model.fc1.bias.copy_(scale.squeeze(1) / 10)
    norms = gs.norms()
    k = torch.tensor([3])
    dropped = project_to_k_(gs, k)
    kept = gs.nonzero()
    assert int(kept.sum()) == 3 and int(dropped.sum()) == 5
    assert set(torch.nonzero(kept).flatten().tolist()) == set(torch.topk(norms, 3).indices.tolist())


def test_per_layer_scopes_and_k_from_sparsity() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(4))
    x = torch.randn(1, 3, 8, 8)
    model(x)
    gs = build_groups(model, _profile(), x)
    k = k_per_scope(gs, 0.5)
    assert sorted(zip(gs.scope_sizes.tolist(), k.tolist(), strict=True)) == [(6, 3), (8, 4)]
    with pytest.raises(ValueError, match="sparsity"):
        k_per_scope(gs, 1.0)


def test_constructor_validation() -> None:
    model = _Net()
    x, _ = _data()
    gs = build_groups(model, _profile(), x[:1])
    with pytest.raises(ValueError, match="k must have shape"):
        ProxSGD(model, gs, [1, 2], lr=0.1)
    with pytest.raises(ValueError, match="eps"):
        ProxSGD(model, gs, [1], lr=0.1, eps=1.0)
    with pytest.raises(ValueError, match="lam"):
        ProxSGD(model, gs, [1], lr=0.1, lam=-1.0)


@pytest.mark.parametrize("release", [True, False])
def test_release_at_k_stops_the_ridge_on_survivors(release: bool) -> None:
    torch.manual_seed(0)
    model = _Net(hidden=8)
    x, _ = _data()
    gs = build_groups(model, _profile(), x[:1])
    opt = ProxSGD(model, gs, torch.tensor([3]), lr=0.1, lam=1.0, momentum=0.0, hs_start=0, release_at_k=release)
    opt.freeze_(range(5))  # the selection is final: 3 groups alive = k
    before = gs.norms().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = gs.norms()
    alive = ~opt.frozen
    expected = before[alive] if release else before[alive] / (1 + 0.1 * 1.0 * gs.weights[alive])
    torch.testing.assert_close(after[alive], expected, atol=1e-6, rtol=1e-6)
    assert bool((after[~alive] == 0).all())


def _two_layer_global():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 6)
    gs = build_groups(model, _profile(scope="global"), x[:1])
    return model, x, gs


def test_global_scope_projection_never_empties_a_layer() -> None:
    model, _, gs = _two_layer_global()
    assert gs.num_scopes == 1 and gs.num_groups == 16
    with torch.no_grad():  # the first layer's groups are all tiny: plain top-k would drop the whole layer
        model[0].weight.mul_(1e-3)
        model[0].bias.mul_(1e-3)
    project_to_k_(gs, torch.tensor([4]))
    alive = gs.nonzero()
    first = torch.tensor([g.root_module == "0" for g in gs.groups])
    assert int(alive.sum()) == 4
    assert int((alive & first).sum()) == 1 and int((alive & ~first).sum()) == 3


def test_global_scope_halfspace_keeps_one_group_per_layer() -> None:
    torch.manual_seed(3)
    model, x, gs = _two_layer_global()
    opt = ProxSGD(model, gs, torch.tensor([2]), lr=0.05, lam=3.0, eps=0.95, hs_start=0)
    y = torch.randn(4, 2)
    first = torch.tensor([g.root_module == "0" for g in gs.groups])
    for _ in range(40):
        _step(model, opt, x, y)
        alive = gs.nonzero()
        assert int((alive & first).sum()) >= 1 and int((alive & ~first).sum()) >= 1
