"""Deployment bundle: the ONNX model + surgery plan + manifest (hashes, I/O, preprocessing) + parity data.

Layout of a bundle directory::

    model.onnx  surgery_plan.json  parity_input.npy  parity_output.npy  README.md  manifest.json  manifest.sha256
    model.int8.onnx  parity_output_int8.npy            (with int8=True: ORT static QDQ quantisation)

``manifest.json`` records the SHA-256 of every other file; ``manifest.sha256`` holds the SHA-256 of
``manifest.json`` itself (``sha256sum -c manifest.sha256`` format), so an edited manifest
(preprocessing, accuracy, tolerances) is detected too. This is integrity, not authenticity: whoever
can rewrite the files can rewrite both hashes. :func:`verify_bundle` checks both hashes, re-runs the
fp32 model on ``parity_input.npy`` (real example images of the run) against ``parity_output.npy``
(PARITY_ATOL/RTOL) and the int8 model against ``parity_output_int8.npy`` (INT8_PARITY_FRAC of the
output range: int8 kernels differ between CPUs by a few quantisation steps). Bundles are built in a
temporary directory next to ``out_dir`` and renamed into place, with the normal directory mode.
"""

from __future__ import annotations

import hashlib
import logging
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
from hwprune.base.files import atomic_write_json, atomic_write_text, check_readable_file, dir_mode, read_json
from hwprune.base.optional import import_optional
from hwprune.base.outpath import check_out_dir
from hwprune.runtime.onnxfile import ort_session
from hwprune.training.rundir import RunDir

if TYPE_CHECKING:
    from hwprune.profiles import BenchSpec

__all__ = ["BUNDLE_FORMAT", "PARITY_ATOL", "PARITY_RTOL", "INT8_PARITY_FRAC", "PARITY_BATCH", "MANIFEST",
           "MANIFEST_HASH", "VerifyReport", "make_bundle", "verify_bundle", "sha256_file"]

BUNDLE_FORMAT = 1
PARITY_ATOL = 1e-4  # absolute tolerance of the ORT-vs-stored-output parity check (float32, any CPU)
PARITY_RTOL = 1e-3  # relative tolerance of the same check
INT8_PARITY_FRAC = 0.05  # int8 parity: max |diff| <= this fraction of the stored output's range (CPU-dependent kernels)
PARITY_BATCH = 2
PARITY_SEED = 0
MANIFEST, MODEL, INT8_MODEL, PLAN = "manifest.json", "model.onnx", "model.int8.onnx", "surgery_plan.json"
MANIFEST_HASH = "manifest.sha256"
PARITY_IN, PARITY_OUT, PARITY_OUT_INT8 = "parity_input.npy", "parity_output.npy", "parity_output_int8.npy"
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
    manifest_sha256: str = ""
    int8_max_abs_diff: float | None = None
    int8_tolerance: float | None = None

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
        if p.is_file() and p.name not in (MANIFEST, MANIFEST_HASH):
            yield p.relative_to(root).as_posix()


def _session(path: Path) -> Any:
    return ort_session(path, what="bundle model", hint="rebuild the bundle with 'hwprune bundle RUN_DIR --out DIR'")


def _parity_input(sess: Any, rd: RunDir) -> np.ndarray:
    """``PARITY_BATCH`` real example images of the run when they fit the model, else standard normal inputs."""
    inp = sess.get_inputs()[0]
    rest = list(inp.shape[1:])
    if not all(isinstance(d, int) for d in rest):
        raise ConfigError(f"input '{inp.name}' has symbolic non-batch dims {inp.shape}; export with fixed C, H, W")
    x = rd.example_batch()[:PARITY_BATCH].numpy().astype(np.float32) if rd.has_example() else np.zeros((0,))
    if list(x.shape[1:]) == rest and len(x) == PARITY_BATCH:
        return np.ascontiguousarray(x)
    return np.random.default_rng(PARITY_SEED).standard_normal([PARITY_BATCH, *rest]).astype(np.float32)


def _load_npy(path: Path) -> np.ndarray:
    check_readable_file(path, "parity array", "; rebuild the bundle")
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: corrupt parity array ({' '.join(str(exc).split())}); rebuild the bundle") from None


def _int8_tolerance(ref: np.ndarray) -> float:
    return INT8_PARITY_FRAC * float(ref.max(initial=0.0) - ref.min(initial=0.0)) + 1e-6


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

    # onnxruntime's quantizer advises through logging.warning on the root logger, which would also
    # install a root handler for the rest of the process (duplicating hwprune's lines): silence it.
    root, quiet = logging.getLogger(), logging.NullHandler()
    root.addHandler(quiet)
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        q.quantize_static(str(src), str(dst), _Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8)
    finally:
        root.removeHandler(quiet)
        root.setLevel(level)


def _bench_spec(rd: RunDir) -> BenchSpec:
    """The run profile's timing settings when they are ORT CPU (what the int8 comparison runs on), else defaults."""
    from hwprune.profiles import BenchSpec

    if not (rd.root / "profile.yaml").exists():  # a run directory without profile.yaml: default settings
        return BenchSpec()
    spec = rd.profile.bench
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
    for row in lat["pruned"]:  # the worker labels both with the spec's precision; the second model is int8
        row["precision"] = "int8"
        row["extra"] = {**row.get("extra", {}), "quantization": "ORT static QDQ, per-channel int8 weights"}
    q = _session(tmp / INT8_MODEL)
    x = _load_npy(tmp / PARITY_IN)
    np.save(tmp / PARITY_OUT_INT8, q.run(None, {q.get_inputs()[0].name: x})[0], allow_pickle=False)
    return {"file": INT8_MODEL, "format": "QDQ", "per_channel": True, "activations": "int8", "weights": "int8",
            "calibration": {"method": "minmax", "samples": len(x_train), "split": "train"},
            "parity": {"output": PARITY_OUT_INT8, "tolerance_fraction_of_range": INT8_PARITY_FRAC},
            "accuracy": acc, "latency": {"fp32": lat["dense"], "int8": lat["pruned"], "speedup": lat["speedup"],
                                         "timed_on": f"{lat['dense'][0]['backend']}/{lat['dense'][0]['provider']}"}}


def _run_facts(rd: RunDir) -> dict[str, Any]:
    """Accuracy, latency and preprocessing of the run for the manifest (each from the latest artifact there is)."""
    report = rd.report() or {}
    metrics_acc: dict[str, Any] | None = None
    pre = None
    if rd.has_metrics():  # a missing metrics.json leaves accuracy out; a corrupt one is an error
        m = rd.metrics()
        metrics_acc, pre = {"dense": m.test_accuracy.dense, "pruned": m.test_accuracy.final}, m.preprocessing
    bench = rd.bench()
    return {"accuracy": report.get("accuracy") or metrics_acc,
            "latency": (report.get("latency") or {}).get("pruned") or (bench.to_dict() if bench else None),
            "preprocessing": report.get("preprocessing") or pre or rd.data().preprocessing}


def _readme(manifest: dict[str, Any]) -> str:
    inp = manifest["inputs"][0]
    pre = manifest.get("preprocessing") or {}
    resize = pre.get("resize") or None
    size = f"{inp['shape'][-2]} x {inp['shape'][-1]}"
    resized = (f" The training images were resized (bilinear) from {resize.get('from')} to {resize.get('to')} "
               f"pixels: resize yours to {size} first." if resize else "")
    return f"""# hwprune deployment bundle: {manifest['model']} for {manifest['profile']}

Files: `{MODEL}` (fp32 ONNX){', `' + INT8_MODEL + '` (int8 QDQ)' if manifest.get('int8') else ''},
`{PLAN}` (channels removed by surgery), `manifest.json` (I/O, preprocessing, accuracy, latency,
SHA-256 of every file), `{MANIFEST_HASH}` (SHA-256 of `manifest.json`), `{PARITY_IN}` /
`{PARITY_OUT}` (reference I/O for `hwprune bundle --verify`).

Input `{inp['name']}`: shape {inp['shape']} ({pre.get('layout', 'NCHW')}, {inp['dtype']}). Preprocess raw pixels
exactly as in training: divide by `scale` ({pre.get('scale', 1)}), then normalise per channel with `mean`
({pre.get('mean')}) and `std` ({pre.get('std')}), all in `manifest.json` under `preprocessing`.{resized}

```python
import json

import numpy as np
import onnxruntime as ort

manifest = json.load(open("manifest.json"))
pre = manifest["preprocessing"]
sess = ort.InferenceSession("{MODEL}", providers=["CPUExecutionProvider"])
raw = np.load("images.npy").astype(np.float32)  # your images: raw pixels, shape (N, C, H, W)
assert list(raw.shape[1:]) == manifest["inputs"][0]["shape"][1:], "resize your images to the model's input"
mean, std = (np.asarray(pre[k], np.float32)[None, :, None, None] for k in ("mean", "std"))
x = (raw / np.float32(pre["scale"]) - mean) / std  # the training preprocessing: scale, then normalise
logits = sess.run(None, {{"{inp['name']}": x.astype(np.float32)}})[0]
print(logits.argmax(axis=1).tolist())  # predicted class per image
```

Check integrity (every file and the manifest) and numerics: `hwprune bundle --verify .`
(without hwprune: `sha256sum -c {MANIFEST_HASH}` checks the manifest, whose `files` lists every other hash).
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

    Long because it is the bundle's write sequence (every file, hash and parity check in order) in one readable place.
    """
    out_dir = Path(out_dir)
    if calib_samples < 1:
        raise ConfigError(f"calib_samples must be >= 1, got {calib_samples}")
    check_out_dir(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out_dir}: already exists and is not empty; choose another --out or pass --force")
    rd = RunDir(run_dir)
    onnx = rd.onnx_path("final")
    if not onnx.is_file():
        raise DataError(f"{onnx}: missing; export the run first ('hwprune export' or 'hwprune run')")
    rd = RunDir.open(run_dir)
    _session(onnx)  # a corrupt model.onnx fails here, before anything is written
    cfg = rd.train_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    os.chmod(tmp, dir_mode())  # mkdtemp makes 0700; a bundle gets the normal mode
    try:
        shutil.copyfile(onnx, tmp / MODEL)
        plan = rd.surgery_plan() if rd.has_surgery_plan() else None
        if plan is not None:
            atomic_write_json(tmp / PLAN, plan)
        sess = _session(tmp / MODEL)
        x = _parity_input(sess, rd)
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
        atomic_write_text(tmp / MANIFEST_HASH, f"{sha256_file(tmp / MANIFEST)}  {MANIFEST}\n")
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


def _check_manifest_hash(root: Path) -> str:
    """The manifest's SHA-256, checked against ``manifest.sha256`` (raises ``DataError`` on a mismatch)."""
    path = root / MANIFEST_HASH
    check_readable_file(path, "manifest hash", "; rebuild the bundle ('hwprune bundle RUN_DIR --out DIR')")
    want = path.read_text(encoding="utf-8", errors="replace").split()
    got = sha256_file(root / MANIFEST)
    if not want or want[0] != got:
        raise DataError(f"{root}: bundle integrity check failed: hash mismatch {MANIFEST} (it was edited after the "
                        f"bundle was built: preprocessing, accuracy or tolerances may be wrong); rebuild the bundle")
    return got


def _compare(root: Path, got: np.ndarray, ref: np.ndarray, what: str) -> np.ndarray:
    if got.shape != ref.shape:
        raise NumericalMismatchError(f"{root}: {what} parity output shape {list(got.shape)} != stored "
                                     f"{list(ref.shape)}", [{"name": what, "shape": list(got.shape),
                                                             "expected": list(ref.shape)}])
    return np.abs(got.astype(np.float64) - ref.astype(np.float64))


def verify_bundle(bundle_dir: Path) -> VerifyReport:
    """Check the manifest's hash, re-hash every file against it, re-run the fp32 (and int8) parity checks.

    Raises:
        DataError: missing or edited manifest, or any hash mismatch / missing file / extra file (all
            listed), or a file ONNX Runtime cannot load.
        NumericalMismatchError: ORT output differs from ``parity_output.npy`` beyond PARITY_ATOL/RTOL,
            or the int8 model's from ``parity_output_int8.npy`` beyond INT8_PARITY_FRAC of its range.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a bundle directory (does not exist or is a file)")
    manifest = read_json(root / MANIFEST, what="bundle manifest", hint="not a hwprune bundle")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DataError(f"{root / MANIFEST}: not a hwprune bundle manifest (no 'files' mapping)")
    digest = _check_manifest_hash(root)
    listed: dict[str, str] = manifest["files"]
    present = set(_files(root))
    problems = [f"missing {rel}" for rel in sorted(set(listed) - present)]
    problems += [f"extra {rel}" for rel in sorted(present - set(listed))]
    problems += [f"hash mismatch {rel}" for rel in sorted(set(listed) & present)
                 if sha256_file(root / rel) != listed[rel]]
    if problems:
        raise DataError(f"{root}: bundle integrity check failed: {'; '.join(problems)}")
    sess = _session(root / MODEL)
    x, ref = _load_npy(root / PARITY_IN), _load_npy(root / PARITY_OUT)
    try:
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as exc:  # onnxruntime rejects the stored input (shape, dtype)
        raise DataError(f"{root / PARITY_IN}: does not fit {MODEL} ({' '.join(str(exc).split())[:200]})") from None
    diff = _compare(root, got, ref, "fp32")
    max_abs = float(diff.max(initial=0.0))
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max(initial=0.0))
    bad = int((diff > PARITY_ATOL + PARITY_RTOL * np.abs(ref)).sum())
    if bad:
        raise NumericalMismatchError(
            f"{root}: {bad} parity output values differ beyond atol={PARITY_ATOL}, rtol={PARITY_RTOL} "
            f"(max abs diff {max_abs:.3g})", [{"name": "output", "mismatched": bad, "max_abs_diff": max_abs}])
    report = VerifyReport(path=str(root), files_checked=len(listed), max_abs_diff=max_abs, max_rel_diff=max_rel,
                          atol=PARITY_ATOL, rtol=PARITY_RTOL, passed=True, manifest_sha256=digest)
    if manifest.get("int8"):
        q = _session(root / INT8_MODEL)
        ref8 = _load_npy(root / PARITY_OUT_INT8)
        diff8 = _compare(root, q.run(None, {q.get_inputs()[0].name: x})[0], ref8, "int8")
        tol = _int8_tolerance(ref8)
        report.int8_max_abs_diff, report.int8_tolerance = float(diff8.max(initial=0.0)), tol
        if report.int8_max_abs_diff > tol:
            raise NumericalMismatchError(
                f"{root}: int8 parity max abs diff {report.int8_max_abs_diff:.3g} exceeds {tol:.3g} "
                f"({INT8_PARITY_FRAC:g} of the stored output's range)",
                [{"name": "int8 output", "max_abs_diff": report.int8_max_abs_diff, "tolerance": tol}])
    return report
