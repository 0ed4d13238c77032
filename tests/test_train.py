"""hwprune.training.loop: determinism, logging, callbacks, schedules, NaN handling, evaluate."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hwprune.base.errors import ConfigError, HwpruneError
from hwprune.training.loop import evaluate, fit
from hwprune.training.schedule import NonFiniteLossError, TrainConfig, make_scheduler, seed_everything

CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=3, device="cpu", progress=False)


def _data(n: int = 192, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long())


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def _sgd(model: nn.Module, momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=CFG.lr, momentum=momentum)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_same_seed_gives_bit_identical_weights() -> None:
    runs = []
    for seed in (3, 3, 4):
        model = _net()
        fit(model, _data(), _sgd(model), TrainConfig(**{**CFG.__dict__, "seed": seed}))
        runs.append(model)
    assert _same_weights(runs[0], runs[1])
    assert not _same_weights(runs[0], runs[2])  # the seed drives shuffling and dropout
    assert not _same_weights(runs[0], _net())  # training changed the weights


def test_caller_dataloader_is_deterministic_too() -> None:
    models = []
    for _ in range(2):
        model = _net()
        torch.manual_seed(123 + len(models))  # different global state before fit must not matter
        fit(model, DataLoader(_data(), batch_size=16, shuffle=True), _sgd(model), CFG)
        models.append(model)
    assert _same_weights(*models)


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    def on_step_end(self, step: int, epoch: int) -> None:
        self.steps.append((step, epoch))

    def on_epoch_end(self, epoch: int, record: dict) -> dict:
        assert record["epoch"] == epoch and "train_loss" in record
        return {"nonzero_groups": {"fc1": 16 - epoch}, "wgsef": torch.tensor(0.5 * epoch)}


def test_log_has_one_record_per_epoch_with_all_fields(tmp_path: Path) -> None:
    model, rec, log = _net(), _Recorder(), tmp_path / "run" / "train_log.jsonl"
    log.parent.mkdir()
    log.write_text(json.dumps({"phase": "earlier", "epoch": 0}) + "\n")  # appended to, not replaced
    hist = fit(model, _data(), _sgd(model), CFG, eval_data=_data(64, seed=1), callbacks=[rec], log_path=log,
               phase="dense", extra_loss=lambda m: 1e-3 * m[0].weight.pow(2).sum(),
               metrics_fn=lambda epoch, record: {"custom": epoch * 2})
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[0] == {"phase": "earlier", "epoch": 0}
    assert lines[1:] == hist.records and len(hist.records) == CFG.epochs
    steps_per_epoch = math.ceil(192 / CFG.batch_size)
    assert rec.steps == [(s, s // steps_per_epoch) for s in range(CFG.epochs * steps_per_epoch)]
    for epoch, r in enumerate(hist.records):
        assert r["phase"] == "dense" and r["epoch"] == epoch and r["step"] == (epoch + 1) * steps_per_epoch
        assert r["nonzero_groups"] == {"fc1": 16 - epoch} and r["wgsef"] == 0.5 * epoch and r["custom"] == 2 * epoch
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["eval_acc"] <= 1 and r["seconds"] > 0
        assert r["penalty"] > 0 and math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"])
    assert hist.records[0]["lr"] == pytest.approx(CFG.lr)  # cosine: starts at the base LR, then decays
    assert hist.column("lr") == sorted(hist.column("lr"), reverse=True) and hist.records[-1]["lr"] < CFG.lr


def test_extra_loss_is_added_to_the_objective() -> None:
    norms = []
    for coef in (0.0, 1.0):
        model = _net()
        fit(model, _data(), _sgd(model), CFG, extra_loss=lambda m, c=coef: c * m[3].weight.pow(2).sum())
        norms.append(float(model[3].weight.detach().norm()))
    assert norms[1] < 0.5 * norms[0]


def test_grad_clip_bounds_every_step() -> None:
    model, clip = _net(), 1e-4
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = TrainConfig(**{**CFG.__dict__, "grad_clip": clip, "lr_schedule": "constant"})
    fit(model, _data(), _sgd(model, momentum=0.0), cfg)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    steps = cfg.epochs * math.ceil(192 / cfg.batch_size)
    assert 0 < float((after - before).norm()) <= steps * cfg.lr * clip * (1 + 1e-5)


@pytest.mark.parametrize("kind", ["cosine", "step", "constant"])
def test_make_scheduler_shapes_and_resumable_state(kind: str) -> None:
    cfg = TrainConfig(epochs=8, lr=0.1, lr_schedule=kind, warmup_epochs=2, device="cpu")
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:10] == pytest.approx([0.1 * (i + 1) / 10 for i in range(10)])  # linear warm-up
    after_warmup = {"cosine": [0.1, lrs[-1]], "step": [0.1, 0.01, 0.001], "constant": [0.1]}[kind]
    assert sorted(set(round(x, 12) for x in lrs[10:]), reverse=True)[0] == pytest.approx(0.1)
    if kind == "cosine":
        assert 0 < lrs[-1] < 0.002 and all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    else:
        assert sorted(set(round(x, 12) for x in lrs[9:]), reverse=True) == pytest.approx(after_warmup)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched2 = make_scheduler(opt2, cfg, steps_per_epoch=5)
    sched2.load_state_dict(torch.load(buf, weights_only=True))
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    model, ckpt = _net(), tmp_path / "ck" / "last.pt"
    state = {"poison": False, "digest": None}

    class Poison:
        def on_step_end(self, step: int, epoch: int) -> None:
            if epoch == 1 and step == 8:  # inside epoch 1, after epoch 0's checkpoint
                state["digest"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
                state["poison"] = True

    extra = lambda m: torch.tensor(float("nan")) if state["poison"] else m[0].bias.sum() * 0  # noqa: E731
    with pytest.raises(NonFiniteLossError) as info:
        fit(model, _data(), _sgd(model), CFG, extra_loss=extra, callbacks=[Poison()], checkpoint_dir=ckpt.parent,
            log_path=tmp_path / "log.jsonl", phase="dense")
    assert isinstance(info.value, HwpruneError)
    assert (info.value.phase, info.value.epoch, info.value.step) == ("dense", 1, 9)
    assert "phase 'dense'" in str(info.value) and "epoch 1" in str(info.value) and "step 9" in str(info.value)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == state["digest"]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


def test_evaluate_matches_a_hand_count() -> None:
    x = torch.eye(4)
    y = torch.tensor([0, 1, 2, 0])
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))  # samples 0, 1 right; 2, 3 wrong
    model.train()
    out = evaluate(model, TensorDataset(x, y), batch_size=3)
    logits = model(x).detach()
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert model.training  # mode restored


def test_progress_bar_quiet_when_not_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    cfg_auto = TrainConfig(**{**CFG.__dict__, "epochs": 1, "progress": None})
    model = _net()
    fit(model, _data(), _sgd(model), cfg_auto)
    assert capfd.readouterr().err == ""
    fit(model, _data(), _sgd(model), TrainConfig(**{**cfg_auto.__dict__, "progress": True}))
    assert "train 0" in capfd.readouterr().err


def test_config_errors_name_the_choices() -> None:
    with pytest.raises(ConfigError, match="cosine, step or constant"):
        TrainConfig(lr_schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cpu, cuda or auto"):
        TrainConfig(device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        fit(_net(), _data(), None, CFG, resume=True)


def test_seed_everything_returns_a_seeded_generator() -> None:
    g1, a = seed_everything(11), torch.rand(3)
    g2, b = seed_everything(11), torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(2, generator=g1), torch.rand(2, generator=g2))


def test_max_steps_ends_the_last_epoch_early_and_the_cosine_reaches_zero_there() -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, seed=0, device="cpu", progress=False, max_steps=14)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps_per_epoch=6)  # 192 images / 32
    hist = fit(model, _data(), opt, cfg, scheduler=sched)
    assert [r["step"] for r in hist.records] == [6, 12, 14]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule ran over 14 steps
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(max_steps=0)
