"""hwprune.training.checkpoint: atomic weights_only checkpoints, RNG round trip, exact resume (incl. SIGKILL)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hwprune.base.errors import DataError
from hwprune.training.checkpoint import (
    CheckpointMismatchError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from hwprune.training.loop import fit
from hwprune.training.schedule import TrainConfig, make_scheduler

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
CFG = TrainConfig(epochs=5, batch_size=32, lr=0.05, seed=5, device="cpu", progress=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _equal_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rng_state_round_trip_is_exact() -> None:
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in the python state
    state = capture_rng_state()
    first = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    assert first[:3] == second[:3] and torch.equal(first[3], second[3])


def test_save_load_round_trip_weights_only(tmp_path: Path) -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = make_scheduler(opt, CFG, steps_per_epoch=4)
    fit(model, _data(), opt, TrainConfig(**{**CFG.__dict__, "epochs": 1}), scheduler=sched)
    path = save_checkpoint(tmp_path / "c" / "last.pt", model=model, optimizer=opt, scheduler=sched, epoch=3,
                           rng_state=capture_rng_state(), extra={"phase": "dense", "history": [{"a": 1.5}]})
    raw = torch.load(path, weights_only=True)  # nothing pickled beyond tensors and containers
    assert raw["epoch"] == 3 and raw["extra"]["history"] == [{"a": 1.5}]
    model2 = _net()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = make_scheduler(opt2, CFG, steps_per_epoch=4)
    info = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2, expect={"phase": "dense"})
    assert info.epoch == 3 and info.extra["phase"] == "dense"
    assert _equal_state(model.state_dict(), model2.state_dict())
    buf1 = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    buf2 = [opt2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(buf1, buf2, strict=True))
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == sched.last_epoch
    assert sorted(os.listdir(tmp_path / "c")) == ["last.pt"]  # no temp files left


def test_failed_save_leaves_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = _net(), tmp_path / "last.pt"
    save_checkpoint(path, model=model, optimizer=None, scheduler=None, epoch=0)
    before = path.read_bytes()

    def broken_save(obj: object, fh) -> None:  # noqa: ANN001
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=None, scheduler=None, epoch=1)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


def test_load_errors_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt", model=_net())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt", model=_net())
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not an hwprune checkpoint"):
        load_checkpoint(tmp_path / "other.pt", model=_net())
    path = save_checkpoint(tmp_path / "ok.pt", model=_net(), optimizer=None, scheduler=None, epoch=0,
                           extra={"phase": "dense"})
    with pytest.raises(DataError, match="does not match"):
        load_checkpoint(path, model=nn.Linear(6, 3))
    untouched = nn.Linear(6, 3)
    with pytest.raises(CheckpointMismatchError, match="phase='dense', expected 'nm'"):
        load_checkpoint(path, model=untouched, expect={"phase": "nm"})


class _InterruptError(Exception):
    pass


class _StopAt:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step_end(self, step: int, epoch: int) -> None:
        if epoch == self.epoch and step % 5 == 2:
            raise _InterruptError


def test_in_process_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = _net()
    fit(full, _data(), torch.optim.SGD(full.parameters(), lr=0.05, momentum=0.9), CFG)
    model, log, ck = _net(), tmp_path / "log.jsonl", tmp_path / "ck"
    with pytest.raises(_InterruptError):  # dies in epoch 3, after the checkpoint of epoch 2
        fit(model, _data(), torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), CFG, callbacks=[_StopAt(3)],
            log_path=log, checkpoint_dir=ck, phase="dense")
    with log.open("a") as fh:  # a record written after the checkpoint and a torn line must vanish
        fh.write(json.dumps({"phase": "dense", "epoch": 3}) + "\n" + '{"phase": "de')
    fresh = _net()
    torch.manual_seed(999)  # state before resume must not matter
    hist = fit(fresh, _data(), torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9), CFG, log_path=log,
               checkpoint_dir=ck, resume=True, phase="dense")
    assert hist.resumed_from == 2 and [r["epoch"] for r in hist.records] == [0, 1, 2, 3, 4]
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert _equal_state(full.state_dict(), fresh.state_dict())


def test_resume_ignores_a_checkpoint_of_another_phase(tmp_path: Path) -> None:
    model = _net()
    fit(model, _data(), None, TrainConfig(**{**CFG.__dict__, "epochs": 1}), checkpoint_dir=tmp_path, phase="dense")
    hist = fit(model, _data(), None, TrainConfig(**{**CFG.__dict__, "epochs": 2}), checkpoint_dir=tmp_path,
               resume=True, phase="finetune")
    assert hist.resumed_from is None and [r["epoch"] for r in hist.records] == [0, 1]
    assert load_checkpoint(tmp_path / "last.pt", model=None).extra["phase"] == "finetune"


def _launch(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--epochs", "5", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _log_epochs(path: Path) -> list[int]:
    if not path.is_file():
        return []
    return [json.loads(x)["epoch"] for x in path.read_text().splitlines() if x.endswith("}")]


def _reference_run(out: Path) -> None:
    """The script's uninterrupted run, in this process (same single-thread setting)."""
    spec = importlib.util.spec_from_file_location("ddp_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module.run(out, epochs=5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # ~10 s idle, ~20 s on a loaded 2-core box; the fast variant is the in-process test above
def test_sigkill_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    proc = _launch(run, "--sleep", "0.3")
    _reference_run(ref)
    ckpt, deadline = run / "checkpoints" / "last.pt", time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        logged = 2 in _log_epochs(run / "train_log.jsonl")
        if logged and ckpt.is_file() and load_checkpoint(ckpt, model=None).epoch >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_log = _log_epochs(run / "train_log.jsonl")
    assert killed_log[:3] == [0, 1, 2] and not (run / "rank0.pt").exists()
    resumed = _launch(run, "--resume")
    assert resumed.wait(timeout=90) == 0, resumed.stderr.read().decode()  # type: ignore[union-attr]
    assert _log_epochs(run / "train_log.jsonl") == [0, 1, 2, 3, 4]
    ref_log = [json.loads(x) for x in (ref / "train_log.jsonl").read_text().splitlines()]
    run_log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in ref_log] == [r["train_loss"] for r in run_log]
    a, b = torch.load(ref / "rank0.pt", weights_only=True), torch.load(run / "rank0.pt", weights_only=True)
    assert _equal_state(a, b)
