"""Deployment bundle: the ONNX model + surgery plan + manifest (hashes, I/O, preprocessing) + parity data.

Layout of a bundle directory::

    model.onnx  surgery_plan.json  parity_input.npy  parity_output.npy  README.md  manifest.json
    model.int8.onnx                                    (with int8=True: ORT static QDQ quantisation)

``manifest.json`` records the SHA-256 of every other file; :func:`verify_bundle` re-hashes them and
re-runs the fp32 model on ``parity_input.npy`` against ``parity_output.npy`` (PARITY_ATOL/RTOL).
Bundles are built in a temporary directory next to ``out_dir`` and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwprune.base.errors import ConfigError, DataError, NumericalMismatchError
from hwprune.base.files import atomic_write_json, atomic_write_text, read_json
from hwprune.base.optional import import_optional
from hwprune.training.rundir import RunDir

if TYPE_CHECKING:
    from hwprune.profiles import BenchSpec

__all__ = ["BUNDLE_FORMAT", "PARITY_ATOL", "PARITY_RTOL", "PARITY_BATCH", "MANIFEST", "VerifyReport",
           "make_bundle", "verify_bundle", "sha256_file"]

BUNDLE_FORMAT = 1
PARITY_ATOL = 1e-4  # absolute tolerance of the ORT-vs-stored-output parity check (float32, any CPU)
PARITY_RTOL = 1e-3  # relative tolerance of the same check
PARITY_BATCH = 2
PARITY_SEED = 0
MANIFEST, MODEL, INT8_MODEL, PLAN = "manifest.json", "model.onnx", "model.int8.onnx", "surgery_plan.json"
PARITY_IN, PARITY_OUT = "parity_input.npy", "parity_output.npy"
_EVAL_BATCH = 256
_CALIB_BATCH = 16


@dataclass
class VerifyReport:
    """Result of :func:`verify_bundle`: files hashed, parity max differences and tolerances."""

    path: str
    files_checked: int
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> Iterator[str]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            yield p.relative_to(root).as_posix()


def _session(path: Path) -> Any:
    ort = import_optional("onnxruntime", extra="onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _parity_input(sess: Any) -> np.ndarray:
    inp = sess.get_inputs()[0]
    rest = list(inp.shape[1:])
    if not all(isinstance(d, int) for d in rest):
        raise ConfigError(f"input '{inp.name}' has symbolic non-batch dims {inp.shape}; export with fixed C, H, W")
    return np.random.default_rng(PARITY_SEED).standard_normal([PARITY_BATCH, *rest]).astype(np.float32)


def _accuracy(sess: Any, x: np.ndarray, y: np.ndarray) -> float:
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), _EVAL_BATCH):
        logits = sess.run(None, {name: x[i:i + _EVAL_BATCH]})[0]
        correct += int((logits.argmax(axis=1) == y[i:i + _EVAL_BATCH]).sum())
    return correct / max(len(x), 1)


def _quantize(src: Path, dst: Path, calib: np.ndarray, input_name: str) -> None:
    """ORT static quantisation: QDQ, per-channel int8 weights, MinMax calibration on ``calib`` (N, C, H, W)."""
    q = import_optional("onnxruntime.quantization", extra="onnx")

    class _Reader(q.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self._it = iter(range(0, len(calib), _CALIB_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self._it, None)
            return None if i is None else {input_name: calib[i:i + _CALIB_BATCH]}

    q.quantize_static(str(src), str(dst), _Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8)


def _bench_spec(rd: RunDir) -> BenchSpec:
    """The run profile's timing settings when they are ORT CPU (what the int8 comparison runs on), else defaults."""
    from hwprune.profiles import BenchSpec

    try:
        spec = rd.profile.bench
    except DataError:  # a run directory without profile.yaml: default settings
        return BenchSpec()
    return spec if spec.backend == "onnxruntime" and spec.provider == "cpu" else BenchSpec()


def _int8(tmp: Path, rd: RunDir, calib_samples: int, bench_spec: BenchSpec | None) -> dict[str, Any]:
    from hwprune.runtime.bench import compare

    data = rd.data()
    x_train = data.train.tensors[0][:calib_samples].numpy().astype(np.float32)
    x_test, y_test = data.test.tensors[0].numpy().astype(np.float32), data.test.tensors[1].numpy()
    fp32 = _session(tmp / MODEL)
    _quantize(tmp / MODEL, tmp / INT8_MODEL, x_train, fp32.get_inputs()[0].name)
    acc = {"onnx_fp32": _accuracy(fp32, x_test, y_test), "onnx_int8": _accuracy(_session(tmp / INT8_MODEL), x_test,
                                                                              y_test), "test_samples": len(x_test)}
    lat = compare(tmp / MODEL, tmp / INT8_MODEL, bench_spec or _bench_spec(rd))
    return {"file": INT8_MODEL, "format": "QDQ", "per_channel": True, "activations": "int8", "weights": "int8",
            "calibration": {"method": "minmax", "samples": len(x_train), "split": "train"},
            "accuracy": acc, "latency": {"fp32": lat["dense"], "int8": lat["pruned"], "speedup": lat["speedup"]}}


def _run_facts(rd: RunDir) -> dict[str, Any]:
    """Accuracy, latency and preprocessing of the run for the manifest (each from the latest artifact there is)."""
    report = rd.report() or {}
    try:
        m = rd.metrics()
        metrics_acc: dict[str, Any] | None = {"dense": m.test_accuracy.dense, "pruned": m.test_accuracy.final}
        pre = m.preprocessing
    except DataError:
        metrics_acc, pre = None, None
    bench = rd.bench()
    return {"accuracy": report.get("accuracy") or metrics_acc,
            "latency": (report.get("latency") or {}).get("pruned") or (bench.to_dict() if bench else None),
            "preprocessing": report.get("preprocessing") or pre or rd.data().preprocessing}


def _readme(manifest: dict[str, Any]) -> str:
    inp = manifest["inputs"][0]
    pre = manifest.get("preprocessing") or {}
    return f"""# hwprune deployment bundle: {manifest['model']} for {manifest['profile']}

Files: `{MODEL}` (fp32 ONNX){', `' + INT8_MODEL + '` (int8 QDQ)' if manifest.get('int8') else ''},
`{PLAN}` (channels removed by surgery), `manifest.json` (I/O, preprocessing, accuracy, latency,
SHA-256 of every file), `{PARITY_IN}` / `{PARITY_OUT}` (reference I/O for `hwprune bundle --verify`).

Input `{inp['name']}`: shape {inp['shape']} ({pre.get('layout', 'NCHW')}, {inp['dtype']}), normalised per
channel with mean {pre.get('mean')} and std {pre.get('std')} after dividing raw pixels by {pre.get('scale', 1)}.

```python
import json
import numpy as np
import onnxruntime as ort

manifest = json.load(open("manifest.json"))
pre = manifest["preprocessing"]
sess = ort.InferenceSession("{MODEL}", providers=["CPUExecutionProvider"])
images = np.random.rand(4, *manifest["inputs"][0]["shape"][1:]).astype(np.float32)  # raw pixels / scale
mean, std = (np.asarray(pre[k], np.float32)[None, :, None, None] for k in ("mean", "std"))
logits = sess.run(None, {{"{inp['name']}": (images - mean) / std}})[0]
print(logits.argmax(axis=1))
```

Check integrity and numerics: `hwprune bundle --verify .`
"""


def make_bundle(run_dir: Path, out_dir: Path, *, int8: bool = False, calib_samples: int = 128,
                bench_spec: BenchSpec | None = None, overwrite: bool = False) -> Path:
    """Build a deployment bundle from a run directory (``model.onnx`` required); returns ``out_dir``.

    Args:
        run_dir: run directory (read through its ``RunDir``) with the exported ``model.onnx`` and
            ``config.yaml``, optionally metrics, surgery plan, report, timing and profile.
        out_dir: destination; must not exist or be empty unless ``overwrite``.
        int8: also add an ORT static int8 model (QDQ, per-channel) with its test accuracy and latency.
        calib_samples: training images used for int8 calibration.
        bench_spec: timing settings for the int8 comparison (default: the run's CPU profile bench).
        overwrite: replace a non-empty ``out_dir`` (the old bundle is removed only after the new one is complete).
    """
    out_dir = Path(out_dir)
    if calib_samples < 1:
        raise ConfigError(f"calib_samples must be >= 1, got {calib_samples}")
    rd = RunDir(run_dir)
    onnx = rd.onnx_path("final")
    if not onnx.is_file():
        raise DataError(f"{onnx}: missing; export the run first ('hwprune export' or 'hwprune run')")
    rd = RunDir.open(run_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ConfigError(f"{out_dir}: already exists and is not empty; choose another --out or pass --force")
    cfg = rd.train_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        shutil.copyfile(onnx, tmp / MODEL)
        plan = rd.surgery_plan() if rd.has_surgery_plan() else None
        if plan is not None:
            atomic_write_json(tmp / PLAN, plan)
        sess = _session(tmp / MODEL)
        x = _parity_input(sess)
        np.save(tmp / PARITY_IN, x, allow_pickle=False)
        np.save(tmp / PARITY_OUT, sess.run(None, {sess.get_inputs()[0].name: x})[0], allow_pickle=False)
        facts = _run_facts(rd)
        import hwprune

        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT, "hwprune_version": hwprune.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "profile": cfg.profile, "model": cfg.model, "data": cfg.data,
            "surgery_plan": PLAN if plan is not None else None,
            "inputs": [{"name": i.name, "shape": i.shape, "dtype": i.type} for i in sess.get_inputs()],
            "outputs": [{"name": o.name, "shape": o.shape, "dtype": o.type} for o in sess.get_outputs()],
            "preprocessing": facts["preprocessing"], "accuracy": facts["accuracy"], "latency": facts["latency"],
            "parity": {"input": PARITY_IN, "output": PARITY_OUT, "atol": PARITY_ATOL, "rtol": PARITY_RTOL},
        }
        manifest["int8"] = _int8(tmp, rd, calib_samples, bench_spec) if int8 else None
        atomic_write_text(tmp / "README.md", _readme(manifest))
        manifest["files"] = {rel: sha256_file(tmp / rel) for rel in _files(tmp)}
        atomic_write_json(tmp / MANIFEST, manifest)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.replace(out_dir, old / "bundle")
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def verify_bundle(bundle_dir: Path) -> VerifyReport:
    """Re-hash every file against ``manifest.json`` and re-run the fp32 parity check.

    Raises:
        DataError: missing manifest, or any hash mismatch / missing file / extra file (all listed).
        NumericalMismatchError: ORT output differs from ``parity_output.npy`` beyond PARITY_ATOL/RTOL.
    """
    root = Path(bundle_dir)
    manifest = read_json(root / MANIFEST, what="bundle manifest", hint="not a hwprune bundle")
    listed: dict[str, str] = manifest.get("files") or {}
    present = set(_files(root))
    problems = [f"missing {rel}" for rel in sorted(set(listed) - present)]
    problems += [f"extra {rel}" for rel in sorted(present - set(listed))]
    problems += [f"hash mismatch {rel}" for rel in sorted(set(listed) & present)
                 if sha256_file(root / rel) != listed[rel]]
    if problems:
        raise DataError(f"{root}: bundle integrity check failed: {'; '.join(problems)}")
    sess = _session(root / MODEL)
    x = np.load(root / PARITY_IN, allow_pickle=False)
    ref = np.load(root / PARITY_OUT, allow_pickle=False)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    if got.shape != ref.shape:
        raise NumericalMismatchError(f"{root}: parity output shape {list(got.shape)} != stored {list(ref.shape)}",
                                     [{"name": "output", "shape": list(got.shape), "expected": list(ref.shape)}])
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max(initial=0.0))
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max(initial=0.0))
    bad = int((diff > PARITY_ATOL + PARITY_RTOL * np.abs(ref)).sum())
    if bad:
        raise NumericalMismatchError(
            f"{root}: {bad} parity output values differ beyond atol={PARITY_ATOL}, rtol={PARITY_RTOL} "
            f"(max abs diff {max_abs:.3g})", [{"name": "output", "mismatched": bad, "max_abs_diff": max_abs}])
    return VerifyReport(path=str(root), files_checked=len(listed), max_abs_diff=max_abs, max_rel_diff=max_rel,
                        atol=PARITY_ATOL, rtol=PARITY_RTOL, passed=True)
