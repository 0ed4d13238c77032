"""The one reader of ONNX files given by a user or found in a bundle: one line naming a bad file.

``check_onnx_file`` parses the file with ``onnx`` (without external data) and runs the checker;
``ort_session`` opens it in ONNX Runtime. A missing, empty, truncated, non-ONNX or invalid file
is a ``DataError`` naming the path and what to do, never a traceback of the protobuf parser or of
ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwprune.base.errors import DataError
from hwprune.base.files import check_readable_file
from hwprune.base.optional import import_optional

__all__ = ["check_onnx_file", "ort_session"]

_HINT = "re-export it with 'hwprune export'"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_onnx_file(path: Path | str, *, what: str = "ONNX model", hint: str = _HINT) -> Path:
    """Return ``path`` if it holds a valid ONNX model (parsed and checked), else raise one ``DataError``.

    Raises:
        DataError: missing, a directory, empty, not parseable as ONNX, or rejected by ``onnx.checker``.
    """
    onnx = import_optional("onnx", extra="onnx")
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    check_readable_file(path, what, tail)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, truncated files, ...: all mean "not an ONNX model"
        raise DataError(f"{path}: not a valid {what} (cannot parse it: {_reason(exc)}){tail}") from None
    if not proto.graph.node and not proto.graph.input:
        raise DataError(f"{path}: not a valid {what} (no graph in the file){tail}")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        raise DataError(f"{path}: invalid {what} (onnx.checker: {_reason(exc)}){tail}") from None
    return path


def ort_session(path: Path | str, *, providers: Sequence[str] = ("CPUExecutionProvider",), what: str = "ONNX model",
                hint: str = _HINT) -> Any:
    """An ONNX Runtime ``InferenceSession`` of a checked file (``check_onnx_file``), errors in one line.

    Raises:
        DataError: the file is not a valid model, or ONNX Runtime cannot load it.
        MissingBackendError: onnxruntime is not installed.
    """
    ort = import_optional("onnxruntime", extra="onnx")
    path = check_onnx_file(path, what=what, hint=hint)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=list(providers))
    except Exception as exc:  # onnxruntime's InvalidGraph, NotImplemented, Fail, ...
        tail = f"; {hint}" if hint else ""
        raise DataError(f"{path}: ONNX Runtime cannot load this {what} ({_reason(exc)}){tail}") from None
