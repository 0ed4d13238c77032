"""Channel blocks cut in norm order (``block_order="norm"``): which channels share a block.

The device only sees the kept width, so a block may hold any channels. Sorted blocks make the
top-k blocks the top channels, and let surgery find the zero channels of a masked model as whole
blocks wherever they sit. Norms here are set with wide gaps (x10 apart), so no order depends on rounding.
"""

from __future__ import annotations

import pytest
import torch

from hwprune.base.errors import ConfigError
from hwprune.groups import build_groups
from hwprune.sparsity.selection import project_to_k_
from hwprune.surgery.remove import remove_zero_groups
from hwprune.training.config import TrainJobConfig
from tests.test_groups import prof, rule
from tests.tiny_models import TINY_MODELS, example_input

BLOCK4 = prof([rule("Conv2d", "channel_block", block=4), rule("Linear", "channel_block", block=4)])
STRONG = [1, 3, 6, 7]  # conv1's four strongest channels (of 8)


def _chain_with_strong_channels() -> torch.nn.Module:
    """ConvChain whose conv1 channels in ``STRONG`` (filter, bias, BN gamma/beta) are 10x the others."""
    model = TINY_MODELS["chain"]()
    with torch.no_grad():
        for c in range(8):
            scale = 10.0 if c in STRONG else 1.0
            for p in (model.conv1.weight, model.conv1.bias, model.bn1.weight, model.bn1.bias):
                p[c] = scale * (0.5 + 0.01 * c)  # distinct, positive, far apart between the two sets
    return model


def _conv1_blocks(gs) -> list[tuple[int, ...]]:
    return [g.channels for g in gs.groups if g.root_module == "conv1"]


def test_index_order_cuts_consecutive_channels_norm_order_sorts_them() -> None:
    model = _chain_with_strong_channels()
    x = example_input("chain")
    assert _conv1_blocks(build_groups(model, BLOCK4, x)) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    norm = build_groups(model, BLOCK4, x, block_order="norm")
    assert _conv1_blocks(norm) == [tuple(STRONG), (0, 2, 4, 5)]
    # same counts, scopes and parameters: only the membership changes
    assert norm.num_groups == build_groups(model, BLOCK4, x).num_groups


def test_top_k_blocks_in_norm_order_keep_the_strongest_channels() -> None:
    model = _chain_with_strong_channels()
    x = example_input("chain")
    gs = build_groups(model, BLOCK4, x, block_order="norm")
    k = gs.k_for_sparsity(0.5)
    project_to_k_(gs, k)
    compact, _ = remove_zero_groups(model, gs, x)
    kept = torch.nonzero(model.conv1.weight.detach().flatten(1).abs().sum(1)).flatten().tolist()
    assert kept == STRONG and compact.conv1.out_channels == 4
    # in index order the same budget must take a block holding strong and weak channels
    again = _chain_with_strong_channels()
    gi = build_groups(again, BLOCK4, x)
    project_to_k_(gi, gi.k_for_sparsity(0.5))
    kept_i = torch.nonzero(again.conv1.weight.detach().flatten(1).abs().sum(1)).flatten().tolist()
    assert kept_i != STRONG and len(kept_i) == 4


def test_scattered_zero_channels_of_a_masked_model_form_whole_blocks() -> None:
    model = TINY_MODELS["chain"]()
    x = example_input("chain")
    dead = [0, 5, 9, 14]  # conv2 channels (16): one per consecutive block of four
    with torch.no_grad():
        for p in (model.conv2.weight, model.conv2.bias, model.bn2.weight, model.bn2.bias):
            p[dead] = 0.0
    by_index = build_groups(model, BLOCK4, x)
    assert int((by_index.norms() == 0).sum()) == 0  # no consecutive block is all zero
    by_norm = build_groups(model, BLOCK4, x, block_order="norm")
    zero = torch.nonzero(by_norm.norms() == 0).flatten().tolist()
    assert len(zero) == 1 and sorted(by_norm.groups[zero[0]].channels) == dead
    compact, _ = remove_zero_groups(model, by_norm, x)
    assert compact.conv2.out_channels == 12 and compact.fc.in_features == 12


def test_bad_block_order_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown block order 'size'; valid: index, norm"):
        build_groups(TINY_MODELS["chain"](), BLOCK4, example_input("chain"), block_order="size")
    with pytest.raises(ConfigError, match="block_order must be one of index, norm"):
        TrainJobConfig(block_order="size")
