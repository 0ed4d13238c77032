"""Tests for hwprune.models: registry, built-in models, residual block protocol, MAC counter."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from hwprune.base.errors import ConfigError
from hwprune.models import (
    BasicBlock,
    ResidualBlock,
    count_params_and_macs,
    create_model,
    list_models,
    model_from_spec,
)
from hwprune.models.mobilenet import InvertedResidual

# Tiny configuration of every registered model (3x8x8 inputs) - the coverage meta-test checks it.
TINY: dict[str, dict] = {
    "mlp": {"hidden": [32, 16]},
    "lenet5": {"bn": True},
    "digits_cnn": {"width": 0.5},
    "vgg": {"width": 0.125},
    "resnet20": {"width": 0.5},
    "resnet56": {"width": 0.25},
    "mobilenetv2": {"width": 0.25, "last_channel": 64},
    "vit_tiny": {"patch": 4, "dim": 32, "depth": 2, "heads": 4},
    "convnext_nano": {"dims": [8, 16], "depths": [1, 1]},
}


def _tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=10, in_channels=3, input_size=8, **TINY[name]).eval()


def test_every_registered_model_has_a_tiny_config() -> None:
    assert set(list_models()) == set(TINY)
    assert list_models() == sorted(list_models())


def test_unknown_model_lists_valid_names_and_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("resnet2")
    msg = str(info.value)
    assert "did you mean" in msg and "'resnet20'" in msg
    for name in list_models():
        assert name in msg


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("lenet5", {"foo": 1}, "'foo'"),
        ("vgg", {"depth": 12}, "depth"),
        ("resnet20", {"width": -1.0}, "width"),
        ("mlp", {"hidden": "12"}, "hidden"),
        ("lenet5", {"input_size": 4}, "input_size"),
        ("lenet5", {"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise_config_error(name: str, kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        create_model(name, **kwargs)


def test_module_callable_names() -> None:
    model = create_model("hwprune.models.cnn:LeNet5", in_channels=1, input_size=28, num_classes=7)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    assert model.hwprune_spec["name"] == "hwprune.models.cnn:LeNet5"
    # a callable that accepts none of the base arguments still works; extra kwargs are checked
    flat = create_model("torch.nn:Flatten", start_dim=2)
    assert flat(torch.zeros(2, 3, 4, 5)).shape == (2, 3, 20)
    with pytest.raises(ConfigError, match="'bogus'"):
        create_model("torch.nn:Flatten", bogus=1)
    with pytest.raises(ConfigError, match="no callable"):
        create_model("hwprune.models.cnn:does_not_exist")
    with pytest.raises(ConfigError, match="cannot import"):
        create_model("no_such_package_xyz.mod:fn")
    with pytest.raises(ConfigError, match="expected torch.nn.Module"):
        create_model("collections:OrderedDict")


def test_spec_round_trip_and_deterministic_init() -> None:
    torch.manual_seed(3)
    model = create_model("mlp", in_channels=1, input_size=8, num_classes=4, hidden=(16, 8))
    text = json.dumps(model.hwprune_spec)
    assert json.loads(text) == {
        "name": "mlp",
        "kwargs": {"num_classes": 4, "in_channels": 1, "input_size": 8, "hidden": [16, 8]},
    }
    torch.manual_seed(3)
    again = model_from_spec(text)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=False):
        assert torch.equal(a, b), k
    torch.manual_seed(4)
    other = model_from_spec(model.hwprune_spec)
    assert not torch.equal(other.fc.weight, model.fc.weight)


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_and_dependency_graph(name: str) -> None:
    model = _tiny(name)
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    groups = list(dg.get_all_groups(ignored_layers=[model.fc]))
    assert len(groups) >= 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_legacy_export(name: str, tmp_path) -> None:
    model = _tiny(name)
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    assert path.stat().st_size > 1000
    if name == "resnet20":
        ort = pytest.importorskip("onnxruntime")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert abs(y - ref).max() < 1e-4


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("lenet5", {"in_channels": 1, "input_size": 28}, 61_706),  # classic LeNet-5 on MNIST
        ("resnet20", {}, 272_474),  # 0.27 M with option-B shortcuts
        ("resnet56", {}, 855_770),
        ("mobilenetv2", {}, 2_236_682),  # CIFAR MobileNetV2, 10 classes
    ],
)
def test_parameter_counts(name: str, kwargs: dict, expected: int) -> None:
    model = create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_channel_multiples() -> None:
    digits = create_model("digits_cnn", in_channels=1, input_size=8, width=0.7)
    convs = [m for m in digits.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 16 == 0 for c in convs)
    mb = create_model("mobilenetv2", width=0.35)
    assert all(m.out_channels % 8 == 0 for m in mb.modules() if isinstance(m, nn.Conv2d))
    vgg = create_model("vgg", width=0.3, depth=13)
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 10


def test_lenet5_adapts_to_input_sizes() -> None:
    for size, flat in ((8, 64), (28, 400), (32, 400)):
        model = create_model("lenet5", in_channels=1, input_size=size)
        assert model.fc1.in_features == flat
        assert model(torch.zeros(1, 1, size, size)).shape == (1, 10)


def test_mobilenet_stride_config() -> None:
    cifar = create_model("mobilenetv2", input_size=32, width=0.25, last_channel=32)
    imagenet = create_model("mobilenetv2", input_size=96, width=0.25, last_channel=32)
    assert cifar.features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4  # total stride 8
    assert imagenet.features(torch.zeros(1, 3, 96, 96)).shape[-1] == 3  # total stride 32


def test_residual_block_protocol() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    same = BasicBlock(8, 8, 1).eval()
    assert isinstance(same.shortcut, nn.Identity)
    full = same(x)
    same.branch = None
    assert torch.equal(same(x), torch.relu(x)) and not torch.equal(full, torch.relu(x))
    down = BasicBlock(8, 16, 2).eval()
    assert not isinstance(down.shortcut, nn.Identity)
    down.branch = None
    with torch.no_grad():
        assert torch.equal(down(x), down.act(down.shortcut(x)))
        assert down(x).shape == (2, 16, 3, 3)
    plain = ResidualBlock(nn.Conv2d(8, 8, 1))
    assert isinstance(plain.act, nn.Identity) and isinstance(plain.shortcut, nn.Identity)


def test_mobilenet_residual_blocks_follow_protocol() -> None:
    full = create_model("mobilenetv2")
    res = [m for m in full.features if isinstance(m, ResidualBlock)]
    plain = [m for m in full.features if isinstance(m, InvertedResidual)]
    assert len(res) == 10 and len(plain) == 7  # 17 inverted residual blocks in total
    assert all(not isinstance(m, ResidualBlock) for m in plain)
    model = _tiny("mobilenetv2")
    res = [m for m in model.features if isinstance(m, ResidualBlock)]
    x = torch.randn(1, 3, 8, 8)
    for block in res:
        block.branch = None
    assert model(x).shape == (1, 10)


def test_layer_removal_keeps_model_traceable() -> None:
    model = _tiny("resnet20")
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    before, _ = count_params_and_macs(model, torch.zeros(1, 3, 8, 8))
    for b in blocks:
        if isinstance(b.shortcut, nn.Identity):
            b.branch = None
    x = torch.randn(1, 3, 8, 8)
    assert model(x).shape == (1, 10)
    after, _ = count_params_and_macs(model, x)
    assert after < before
    tp.DependencyGraph().build_dependency(model, example_inputs=x)


def test_mac_counter_hand_count_lenet5() -> None:
    model = create_model("lenet5", in_channels=1, input_size=28).train()
    params, macs = count_params_and_macs(model, torch.zeros(3, 1, 28, 28))
    hand = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    assert macs == hand == 416_520
    assert params == 61_706
    assert model.training  # mode restored


def test_mac_counter_matches_torch_pruning() -> None:
    torch.manual_seed(0)
    # bias-free convs (incl. grouped / depthwise) and linears: no ops torch-pruning counts extra
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, bias=False),
        nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False),
        nn.Conv2d(16, 16, 3, groups=16, bias=False),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 12, bias=False),
    )
    x = torch.randn(1, 3, 13, 13)
    tp_macs, tp_params = tp.utils.count_ops_and_params(model, x)
    assert count_params_and_macs(model, x) == (tp_params, int(tp_macs))
    # on real models torch-pruning also counts biases, BN, activations and pools: slightly more
    for name in ("resnet20", "mobilenetv2"):
        m = _tiny(name)
        tp_macs, tp_params = tp.utils.count_ops_and_params(m, torch.zeros(1, 3, 8, 8))
        params, macs = count_params_and_macs(m, torch.zeros(1, 3, 8, 8))
        assert params == tp_params and 0.75 * tp_macs <= macs < tp_macs
