"""ONNX export: checker, ORT-vs-PyTorch parity at dynamic batch 1 and 3, typed mismatch errors, N:M check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwprune.base.errors import ConfigError, NumericalMismatchError
from hwprune.cli import cli
from hwprune.runtime.export import (
    ATOL,
    ExportConfig,
    OutputShapeMismatch,
    ToleranceExceeded,
    check_nm_pattern,
    export_and_validate,
    to_onnx,
    validate_onnx,
)

X = (1, 3, 8, 8)


def _tiny_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


class TwoHead(nn.Module):
    """Two outputs, so a mismatch report must list both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head_a = nn.Linear(4, 5)
        self.head_b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.conv(x).relu().mean(dim=(2, 3))
        return self.head_a(z), self.head_b(z)


def test_export_parity_dynamic_batch_and_checker(tmp_path: Path) -> None:
    model = _tiny_cnn()
    path = to_onnx(model, torch.randn(X), tmp_path / "m.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # single file, no temp left behind
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    report = validate_onnx(model, path, inputs=torch.randn(X))
    cases = {(r["case"], tuple(r["shape"])) for r in report.outputs}
    assert cases == {("random_batch1", (1, 10)), ("random_batch3", (3, 10)), ("given", (1, 10))}
    assert report.passed and 0.0 < report.max_abs_diff <= ATOL
    assert report.output_names == ["logits"] and report.opset == 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, *X[1:])
    with torch.no_grad():
        ref = model.eval()(x3).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x3.numpy()})[0], ref, atol=1e-5, rtol=1e-4)


def test_static_batch_and_mode_restored(tmp_path: Path) -> None:
    model = _tiny_cnn().train()
    path = to_onnx(model, torch.randn(X), tmp_path / "s.onnx", ExportConfig(dynamic_batch=False))
    assert model.training
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1
    report = validate_onnx(model, path, ExportConfig(dynamic_batch=False))
    assert [r["case"] for r in report.outputs] == ["random_static"]
    assert model.training


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(opset=13)
    with pytest.raises(ConfigError, match="atol"):
        ExportConfig(atol=-1.0)


def test_tolerance_exceeded_lists_every_output(tmp_path: Path) -> None:
    model = TwoHead()
    path = to_onnx(model, torch.randn(X), tmp_path / "two.onnx", ExportConfig(output_names=("a", "b")))
    assert validate_onnx(model, path, ExportConfig(output_names=("a", "b"))).passed
    with torch.no_grad():
        model.conv.bias += 0.5  # the ONNX file no longer matches this model, on both heads
    with pytest.raises(ToleranceExceeded) as err:
        validate_onnx(model, path)
    assert isinstance(err.value, NumericalMismatchError)
    names = {m["name"] for m in err.value.mismatches}
    assert names == {"a", "b"}
    assert {m["case"] for m in err.value.mismatches} == {"random_batch1", "random_batch3"}
    assert "a[random_batch1]" in str(err.value) and "b[random_batch3]" in str(err.value)


def test_output_shape_mismatch(tmp_path: Path) -> None:
    path = to_onnx(_tiny_cnn(10), torch.randn(X), tmp_path / "m.onnx")
    with pytest.raises(OutputShapeMismatch, match=r"logits\[random_batch1\]: onnx \[1, 10\] vs torch \[1, 7\]"):
        validate_onnx(_tiny_cnn(7), path)


def test_export_and_validate_writes_report_also_on_failure(tmp_path: Path) -> None:
    report = export_and_validate(_tiny_cnn(), torch.randn(X), tmp_path / "m.onnx", report_path=tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["passed"] is True and saved["max_abs_diff"] == report.max_abs_diff
    with pytest.raises(ConfigError, match="output_names"):
        to_onnx(TwoHead(), torch.randn(X), tmp_path / "bad.onnx")  # 2 outputs, 1 name


def test_simplify_keeps_outputs(tmp_path: Path) -> None:
    model = _tiny_cnn()
    path = to_onnx(model, torch.randn(X), tmp_path / "slim.onnx", ExportConfig(simplify=True))
    report = validate_onnx(model, path, ExportConfig(simplify=True))
    assert report.passed and report.simplified


def test_dynamo_exporter_single_file(tmp_path: Path) -> None:
    model = _tiny_cnn()
    path = to_onnx(model, torch.randn(X), tmp_path / "d.onnx", ExportConfig(dynamo=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]  # external_data=False
    assert validate_onnx(model, path).passed


class _NMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def _masked(along_inputs: bool) -> nn.Module:
    net = _NMNet()
    with torch.no_grad():
        for w in (net.conv.weight, net.fc.weight):  # 2 of every 4: along dim 1 (valid) or dim 0 (invalid)
            idx = torch.arange(w.shape[1 if along_inputs else 0]) % 4 < 2
            shape = [1] * w.dim()
            shape[1 if along_inputs else 0] = -1
            w.mul_(idx.view(shape).float())
    return net


def test_check_nm_pattern_accepts_valid_2_4(tmp_path: Path) -> None:
    path = to_onnx(_masked(True), torch.randn(1, 8, 6, 6), tmp_path / "nm.onnx")
    rep = check_nm_pattern(path, 2, 4)
    assert rep.ok and {t["op"] for t in rep.tensors} == {"Conv", "Gemm"}
    conv = next(t for t in rep.tensors if t["op"] == "Conv")
    assert conv["blocks"] == 8 * 2 * 3 * 3 and conv["max_nonzeros"] == 2 and conv["sparsity"] == 0.5
    assert check_nm_pattern(path, 2, 4, weight_names=[conv["node"]]).tensors[0]["name"] == conv["name"]
    with pytest.raises(ConfigError, match="not a Conv/Gemm/MatMul"):
        check_nm_pattern(path, 2, 4, weight_names=["nope"])
    with pytest.raises(ConfigError, match="0 < n < m"):
        check_nm_pattern(path, 4, 4)


def test_check_nm_pattern_rejects_mask_on_wrong_dim(tmp_path: Path) -> None:
    path = to_onnx(_masked(False), torch.randn(1, 8, 6, 6), tmp_path / "bad.onnx")
    with pytest.raises(NumericalMismatchError, match="2 tensor") as err:
        check_nm_pattern(path, 2, 4)
    assert {m["op"] for m in err.value.mismatches} == {"Conv", "Gemm"}
    assert all(m["max_nonzeros"] == 4 and m["violating_blocks"] == m["blocks"] // 2 for m in err.value.mismatches)
    with pytest.raises(NumericalMismatchError, match="max 8 nonzeros"):
        check_nm_pattern(path, 3, 8)  # rows with k % 4 < 2 are fully dense along the input channels


def test_cli_export_bare_model(tmp_path: Path) -> None:
    out = tmp_path / "x" / "model.onnx"
    res = CliRunner().invoke(cli, ["export", "--model", "lenet5", "--in-channels", "1", "--input-size", "28",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.with_name(out.stem + ".export.json").read_text())["report"]
    assert report["passed"] and report["max_abs_diff"] <= ATOL and out.is_file()
    res = CliRunner().invoke(cli, ["export"])
    assert res.exit_code == 2 and "exactly one of RUN_DIR or --model" in res.output


class _Pooled(nn.Module):
    """adaptive_avg_pool2d to 3x3 on a 4x4 map: the TorchScript exporter refuses it (not a factor of 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_exporter_falls_back_and_says_so(tmp_path: Path) -> None:
    model = _Pooled().eval()
    report = export_and_validate(model, torch.randn(1, 3, 4, 4), tmp_path / "m.onnx",
                                 report_path=tmp_path / "export_report.json")
    assert report.passed and report.exporter == "dynamo"
    assert report.fallback_reason.startswith("torchscript: ") and "adaptive_avg_pool2d" in report.fallback_reason
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert saved["exporter"] == "dynamo" and "adaptive_avg_pool2d" in saved["fallback_reason"]


def test_every_exporter_failing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwprune.runtime import export

    def fail(model: nn.Module, args: tuple, tmp: Path, cfg: ExportConfig, n_out: int, exporter: str) -> None:
        raise RuntimeError(f"{exporter} cannot export aten::frobnicate\n  graph dump line 1\n  graph dump line 2")

    monkeypatch.setattr(export, "_export_once", fail)
    with pytest.raises(export.ExportFailed) as info:
        export.to_onnx(_tiny_cnn(), torch.randn(X), tmp_path / "m.onnx")
    msg = str(info.value)
    assert "\n" not in msg and "Sequential" in msg and "graph dump" not in msg
    assert "torchscript: RuntimeError: torchscript cannot export aten::frobnicate" in msg
    assert "dynamo: RuntimeError: dynamo cannot export" in msg
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_parity_failure_of_the_first_exporter_tries_the_second(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from hwprune.runtime import export

    real = export.validate_onnx
    calls: list[str] = []

    def first_fails(model: nn.Module, path: Path, cfg: ExportConfig | None = None, **kw: object) -> object:
        calls.append("v")
        if len(calls) == 1:
            raise ToleranceExceeded("1 output(s) exceed atol: logits[random_batch3]", [{"name": "logits"}])
        return real(model, path, cfg, **kw)

    monkeypatch.setattr(export, "validate_onnx", first_fails)
    report = export.export_and_validate(_tiny_cnn(), torch.randn(X), tmp_path / "m.onnx")
    assert report.exporter == "dynamo" and "torchscript: 1 output(s) exceed atol" in report.fallback_reason
