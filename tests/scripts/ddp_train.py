"""Tiny training run used by tests/test_checkpoint.py and tests/test_distributed.py.

Single process:  python tests/scripts/ddp_train.py OUT [--epochs 5] [--sleep 0.2] [--resume]
Two processes:   python -m torch.distributed.run --nproc_per_node 2 tests/scripts/ddp_train.py OUT

Writes OUT/train_log.jsonl and OUT/checkpoints/last.pt (rank 0) and, at the end, every rank's
final state_dict to OUT/rank{r}.pt. ``--optimizer pkg.mod:fn`` picks the optimiser:
``fn(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer`` (default: SGD with momentum).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root: hwprune, tests.* factories

from hwprune.training.distributed import get_rank, shutdown_distributed  # noqa: E402
from hwprune.training.loop import fit  # noqa: E402
from hwprune.training.schedule import TrainConfig  # noqa: E402


def tiny_net() -> nn.Module:
    """Conv-BN-ReLU-Dropout-Linear on 1x8x8 inputs (BN buffers and dropout RNG are exercised)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 3)
    )


def tiny_data(n: int = 256) -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].sum(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].sum(dim=(1, 2)) > 0).long()
    return TensorDataset(x, y)


def sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def load_factory(spec: str) -> Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]:
    if spec == "sgd":
        return sgd
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class Sleep:
    """Slows each epoch down so a test can kill the process mid-run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        time.sleep(self.seconds)


def run(out: Path, *, epochs: int = 5, sleep: float = 0.0, resume: bool = False, optimizer: str = "sgd") -> None:
    """Train the tiny net on the tiny data and save this rank's final weights to OUT/rank{r}.pt."""
    torch.manual_seed(0)
    model = tiny_net()
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, weight_decay=1e-4, seed=7, device="cpu",
                      lr_schedule="cosine", progress=False)
    data = tiny_data()
    fit(model, data, load_factory(optimizer)(model, cfg), cfg, eval_data=data,
        callbacks=[Sleep(sleep)] if sleep else [], log_path=out / "train_log.jsonl",
        checkpoint_dir=out / "checkpoints", resume=resume)
    torch.save(model.state_dict(), out / f"rank{get_rank()}.pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--optimizer", default="sgd", help="pkg.mod:fn, fn(model, cfg) -> Optimizer")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run(args.out, epochs=args.epochs, sleep=args.sleep, resume=args.resume, optimizer=args.optimizer)
    shutdown_distributed()


if __name__ == "__main__":
    main()
