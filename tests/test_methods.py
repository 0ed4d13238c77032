"""Method registry and the SSR / group-lasso / magnitude methods end to end on sklearn digits."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.groups import build_groups
from hwprune.profiles import load_profile
from hwprune.sparsity.methods import get_method, list_methods
from hwprune.sparsity.methods.group_lasso import GroupLassoSGD
from hwprune.sparsity.methods.ssr_method import SsrOptions
from hwprune.sparsity.methods.wgsef_method import WgsefOptions
from hwprune.training.artifacts import TrainMetrics
from hwprune.training.config import TrainJobConfig
from hwprune.training.job import run_train_job

pytestmark = pytest.mark.numerics  # re-run under every ATen CPU capability (make test)

TRAIN_LIMIT, BATCH, EPOCHS = 192, 32, 2
TRAIN = TRAIN_LIMIT - math.ceil(0.1 * TRAIN_LIMIT)  # the job's validation split (10 %) is carved from the limit
STEPS = EPOCHS * math.ceil(TRAIN / BATCH)  # sparse-phase SGD steps
INNER = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threading only adds overhead on a shared machine
    yield
    torch.set_num_threads(threads)


def _job(tmp_path: Path, method: str, lam: float = 5e-3, model: str = "digits_cnn", **options: object) -> TrainMetrics:
    """One tiny train job; returns its metrics (what the method itself achieved is asserted by each test)."""
    cfg = TrainJobConfig(model=model, data="digits", profile="generic-channel", method=method, sparsity=0.5,
                         epochs=EPOCHS, dense_epochs=1, finetune_epochs=1, train_limit=TRAIN_LIMIT, batch_size=BATCH,
                         lam=lam, method_options=dict(options))
    return run_train_job(cfg, tmp_path, progress=False).metrics


def _method_met_budget(m: TrainMetrics) -> None:
    """The method's own selection (finalize) left exactly k groups: the final projection removed none."""
    assert m.groups.nonzero_before_projection == m.groups.k < m.groups.total, m.groups
    assert m.groups.zeroed_by_projection == 0


def _tiny() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    return m, build_groups(m, load_profile("generic-channel"), torch.randn(2, 4))


def test_registry_lists_all_methods() -> None:
    methods = list_methods()
    for name in ("wgsef", "ssr-l21", "ssr-l20", "group-lasso", "magnitude", "random"):
        assert name in methods and len(methods[name]) > 10 and "\n" not in methods[name]
    assert get_method("magnitude").trains is False and get_method("ssr-l20").trains is True
    with pytest.raises(ConfigError, match="ssr-l21"):
        get_method("ssr-l12")


@pytest.mark.parametrize("variant", ["ssr-l21", "ssr-l20"])
def test_ssr_joint_meets_budget(tmp_path: Path, variant: str) -> None:
    m = _job(tmp_path, variant, inner_steps=INNER)
    info = m.method_info
    assert info["mode"] == "joint" and info["variant"] == variant[-3:]
    assert info["admm_iterations"] == math.ceil(STEPS / INNER)
    assert [h[0] for h in info["history"]] == list(range(0, STEPS, INNER))
    _method_met_budget(m)  # finalize already kept exactly k by ||F||
    assert info["trimmed_by_topk"] == m.groups.total - m.groups.k - sum(info["f_zero_rows"]) + info["revived"]


def test_ssr_calibrated_lambda_selects_k_rows(tmp_path: Path) -> None:
    m = _job(tmp_path, "ssr-l21", inner_steps=INNER, calibrate=True)
    info = m.method_info
    assert info["calibrated"] and len(info["lam_multipliers"]) == len(m.scopes)
    assert info["f_zero_rows"] == [s.total - s.k for s in m.scopes]  # lambda alone picks k rows
    assert info["revived"] == 0 and info["trimmed_by_topk"] == 0
    _method_met_budget(m)


def test_ssr_layerwise_meets_budget(tmp_path: Path) -> None:
    m = _job(tmp_path, "ssr-l20", inner_steps=INNER, ssr_mode="layerwise", lam=0.05)
    info = m.method_info
    assert info["mode"] == "layerwise"
    _method_met_budget(m)
    steps = [h[0] for h in info["history"]]
    S = len(m.scopes)
    starts = [round(i * STEPS / S) for i in range(S)]
    assert set(starts) <= set(steps) and steps == sorted(steps)


def test_group_lasso_prox_zeroes_groups_itself(tmp_path: Path) -> None:
    # LeNet-5 (no BatchNorm in the groups): at lam 1.5 the soft threshold alone zeroes part of the first
    # conv's filters in 12 steps; the projection then has less to remove than total - k.
    gl = _job(tmp_path, "group-lasso", lam=1.5, model="lenet5")
    zeroed = gl.method_info["zeroed_by_prox"]
    assert zeroed > 0, gl.method_info
    assert gl.groups.nonzero_before_projection == gl.groups.total - zeroed
    assert gl.groups.zeroed_by_projection < gl.groups.total - gl.groups.k


def test_magnitude_selects_the_budget_itself(tmp_path: Path) -> None:
    mag = _job(tmp_path, "magnitude")
    assert mag.method_info["zeroed"] == mag.groups.total - mag.groups.k
    _method_met_budget(mag)
    assert mag.epochs == {"dense": 1, "sparse": 0, "finetune": 1 + EPOCHS}  # its sparse epochs go to the fine-tune


def test_each_method_parses_its_own_options() -> None:
    ssr = get_method("ssr-l21").parse_options({"calibrate": True, "inner_steps": 7})
    assert ssr == SsrOptions(calibrate=True, inner_steps=7) and ssr.rho == 1.0  # defaults live in the dataclass
    assert get_method("wgsef").parse_options({}) == WgsefOptions(eps=0.05, hs_frac=0.3)
    with pytest.raises(ConfigError, match="did you mean 'calibrate'"):
        get_method("ssr-l21").parse_options({"calibrat": True})
    with pytest.raises(ConfigError, match="layerwise"):
        get_method("ssr-l20").parse_options({"ssr_mode": "global"})
    with pytest.raises(ConfigError, match="'inner_steps' must be int"):
        get_method("ssr-l20").parse_options({"inner_steps": 2.5})
    with pytest.raises(ConfigError, match="hs_frac"):
        get_method("wgsef").parse_options({"hs_frac": 1.5})
    with pytest.raises(ConfigError, match="valid options: none"):
        get_method("group-lasso").parse_options({"rho": 1.0})


def test_ssr_rejects_unknown_scopes() -> None:
    from hwprune.sparsity.methods import MethodConfig

    model, gs = _tiny()
    k = gs.k_for_sparsity(0.5)
    opts = get_method("ssr-l20").parse_options({"lam_per_scope": {"nope": 2.0}})
    with pytest.raises(ConfigError, match="scopes"):
        get_method("ssr-l20").prepare(model, gs, k, MethodConfig(options=opts), total_steps=4)


def test_train_job_rejects_bad_method_options_before_training(tmp_path: Path) -> None:
    cfg = TrainJobConfig(model="digits_cnn", data="digits", method="ssr-l21", method_options={"rh0": 1.0})
    with pytest.raises(ConfigError, match="did you mean 'rho'"):
        run_train_job(cfg, tmp_path / "run", progress=False, profile=load_profile("generic-channel"))
    assert not (tmp_path / "run").exists()


def test_group_lasso_step_is_soft_threshold() -> None:
    model, gs = _tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    norms0 = gs.norms()
    lr = 0.5
    lam = float(norms0.median()) / lr  # the threshold lr*lam sits inside the spread of the norms
    opt = GroupLassoSGD(model, gs, lr=lr, lam=lam, momentum=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    expected = torch.clamp(1 - lr * lam / norms0, min=0)
    assert torch.allclose(gs.norms(), norms0 * expected, atol=1e-6)
    assert 0 < int((expected == 0).sum()) < gs.num_groups  # some, not all, groups hit exact zero
    assert torch.equal(model[4].weight, before["4.weight"])  # ungrouped: plain SGD (zero grad, no decay)
    assert float(opt.penalty()) == pytest.approx(lam * float(gs.norms().sum()))


def test_magnitude_keeps_largest_groups() -> None:
    model, gs = _tiny()
    norms = gs.norms()
    k = gs.k_for_sparsity(0.5)
    info = get_method("magnitude").finalize(model, gs, k, None)
    kept = gs.nonzero()
    assert info["zeroed"] == gs.num_groups - int(k.sum())
    for s in range(gs.num_scopes):
        idx = torch.nonzero(gs.scope_index == s).flatten()
        top = set(idx[norms[idx].argsort(descending=True)[: int(k[s])]].tolist())
        assert set(idx[kept[idx]].tolist()) == top


def test_random_keeps_k_groups_per_scope_chosen_by_its_own_seed() -> None:
    kept = []
    for seed in (0, 0, 1, 2, 3):
        model, gs = _tiny()
        k = gs.k_for_sparsity(0.5)
        method = get_method("random")
        method.parse_options({"seed": seed})
        info = method.finalize(model, gs, k, None)
        assert info == {"zeroed": gs.num_groups - int(k.sum()), "seed": seed}
        assert torch.equal(gs.nonzero_per_scope(), k)
        kept.append(tuple(gs.nonzero().tolist()))
    assert kept[0] == kept[1] and len(set(kept)) > 2  # reproducible per seed, different across seeds
    with pytest.raises(ConfigError, match="seed"):
        get_method("random").parse_options({"seed": "one"})


def test_layerwise_driver_masks_each_scope_and_keeps_it_zero() -> None:
    from hwprune.sparsity.methods.ssr_method import AULMDriver
    from hwprune.sparsity.ssr import AULMConfig, AULMState

    model, gs = _tiny()
    k = gs.k_for_sparsity(0.5)
    norms = gs.norms()
    lam = float(norms[gs.scope_index == 0].median()) ** 2 / 2 * 1.01  # hard threshold: about half of scope 0 dies
    state = AULMState(model, gs, AULMConfig(variant="l20", lam=lam, inner_steps=2, mode="layerwise"))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # lr*rho*inner ~ 1: the W-step nearly solves its subproblem
    total = 8
    driver = AULMDriver(state, opt, total, k)
    driver.start()
    assert state.active.tolist() == (gs.scope_index == 0).tolist()
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    dead_after_stage0 = None
    for step in range(total):
        loss = nn.functional.cross_entropy(model(x), y) + state.penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        driver.on_step_end(step, 0)
        if driver.stage == 1 and dead_after_stage0 is None:
            dead_after_stage0 = driver.dead.clone()
            assert state.active.tolist() == (gs.scope_index == 1).tolist()
    assert dead_after_stage0 is not None and bool(dead_after_stage0.any())
    assert not bool(dead_after_stage0[gs.scope_index == 1].any())
    assert int((~dead_after_stage0[gs.scope_index == 0]).sum()) >= int(k[0])
    assert not bool(gs.nonzero()[dead_after_stage0].any())  # still exactly zero after later SGD steps
    assert [h[0] for h in driver.history] == [0, 2, 4, 6]


@pytest.mark.numerics
def test_the_zero_cause_tracker_tells_prox_from_half_space() -> None:
    from torch import nn

    from hwprune.groups import build_groups
    from hwprune.profiles import load_profile
    from hwprune.sparsity.monitor import ZeroCauseTracker
    from hwprune.sparsity.proxsgd import ProxSGD

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    gs = build_groups(model, load_profile("generic-channel"), x[:1])
    k = gs.k_for_sparsity(0.5)
    with torch.no_grad():
        model[0].weight[0].zero_()
        model[0].bias[0] = 0.0  # one group dead before the phase
    opt = ProxSGD(model, gs, k, lr=0.1, lam=5.0, hs_start=10, eps=0.9)
    tracker = ZeroCauseTracker(gs, opt, k=k)
    for step in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.on_step_end(step, 0)
    causes = tracker.per_scope()
    zero = int((~gs.nonzero()).sum())
    assert sum(sum(v) for v in causes.values()) == zero  # every zero group has exactly one cause
    assert causes["dead"] == [1] and causes["prox"][0] + causes["halfspace"][0] == zero - 1
    assert causes["prox"][0] >= 1 and causes["halfspace"][0] >= 1  # both steps zeroed groups here (lam 5, eps 0.9)
    assert tracker.on_epoch_end(0, {})["k_groups"] == int(k.sum())
