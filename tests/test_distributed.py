"""hwprune.training.distributed: single-process no-ops and a 2-process CPU (gloo) DDP run via torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.training import distributed as ddp

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert ddp.setup_distributed(torch.device("cpu")) == ddp.DistInfo(0, 1, 0)
    assert not ddp.is_distributed() and ddp.is_main_process()
    assert (ddp.get_rank(), ddp.get_world_size()) == (0, 1)
    model = nn.Linear(2, 2)
    assert ddp.wrap_model(model, torch.device("cpu")) is model and ddp.unwrap(model) is model
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(ddp.all_reduce_sum(values), torch.tensor([1.0, 2.0]))
    ddp.barrier()
    ddp.broadcast_buffers(model)


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"}])
def test_bad_launcher_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="RANK"):
        ddp.env_info()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # ~15 s idle (two torchrun processes start torch); is_main_process has a fast test in test_rundir
def test_two_cpu_processes_end_with_identical_replicas_and_exact_k(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(SCRIPT), str(tmp_path), "--epochs", "3",
           "--optimizer", "tests.ddp_factories:prox_sgd"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    mismatched = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not mismatched, f"replicas differ in {mismatched}"
    assert rank0["1.running_mean"].abs().sum() > 0  # BN buffers were trained and synchronised
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["extra"]["world_size"] == 2
    assert all(torch.equal(ckpt["model"][k], rank0[k]) for k in rank0)
    records = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]  # rank 0 alone writes the log
    assert records[0]["step"] == 4  # 256 samples / 2 ranks / batch 32 = 4 steps per epoch
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    # ProxSGD ran after the gradient all-reduce on identical replicas: exactly k conv channels survive
    # on both ranks (channel group = conv row + bias + BN gamma/beta).
    from tests.ddp_factories import K_CONV

    for state in (rank0, rank1):
        norms = (state["0.weight"].flatten(1).norm(dim=1) + state["0.bias"].abs() + state["1.weight"].abs()
                 + state["1.bias"].abs())
        assert int((norms > 0).sum()) == K_CONV, norms
