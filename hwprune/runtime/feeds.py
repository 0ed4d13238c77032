"""The one helper that makes random input arrays for an ONNX graph's inputs (ORT and OpenVINO alike).

``random_feeds(inputs, batch, ...)`` takes ``InputSpec``s (name, dims with ``None`` for a symbolic
dim, element type as ONNX spells it, e.g. ``tensor(float)``) and returns standard-normal
numpy arrays (integer types get zeros, bool False) with dim 0 set to ``batch``. ``ort_inputs(sess)``
converts an ONNX Runtime session's ``NodeArg``s; ``hwprune.runtime.openvino`` converts OpenVINO's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwprune.base.errors import ConfigError

__all__ = ["InputSpec", "NP_DTYPES", "FEED_SEED", "random_feeds", "ort_inputs"]

FEED_SEED = 0
NP_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: ``dims`` holds ints for fixed dims and ``None`` for symbolic ones."""

    name: str
    dims: tuple[int | None, ...]
    type: str


def ort_inputs(sess: Any) -> list[InputSpec]:
    """``InputSpec``s of an ``onnxruntime.InferenceSession`` (``sess.get_inputs()``)."""
    return [InputSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape), i.type)
            for i in sess.get_inputs()]


def random_feeds(inputs: Sequence[InputSpec], batch: int | None, input_shape: Sequence[int] | None = None, *,
                 rng: np.random.Generator | None = None, seed: int = FEED_SEED,
                 strict_batch: bool = True) -> dict[str, np.ndarray]:
    """Random arrays for ``inputs`` with dim 0 = ``batch``.

    Args:
        inputs: the graph inputs.
        batch: batch size for dim 0; ``None`` keeps a fixed dim 0 as it is (and fails on a symbolic one).
        input_shape: per-sample shape (without batch) for graphs with other symbolic dims.
        rng: numpy generator (default: ``default_rng(seed)``).
        seed: seed when ``rng`` is None.
        strict_batch: a fixed dim 0 different from ``batch`` is an error (else it is kept).

    Returns:
        name -> array of shape ``(batch, *rest)``: float types standard normal, other types zeros.

    Raises:
        ConfigError: fixed batch mismatch, symbolic dims without ``input_shape``, or an unknown type.
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in inputs:
        dims = list(inp.dims)
        if not dims:
            raise ConfigError(f"input '{inp.name}' is a scalar; cannot set a batch dim")
        first = dims[0]
        if isinstance(first, int) and batch is not None and first != batch and strict_batch:
            raise ConfigError(f"input '{inp.name}' has a fixed batch of {first}, cannot time batch {batch}; "
                              "export with a dynamic batch axis")
        lead = first if isinstance(first, int) and (batch is None or not strict_batch) else batch
        if lead is None:
            raise ConfigError(f"input '{inp.name}' has a symbolic batch dim {inp.dims}; pass a batch size")
        rest = list(input_shape) if input_shape is not None else dims[1:]
        if len(rest) != len(dims) - 1 or not all(isinstance(d, int) for d in rest):
            raise ConfigError(f"input '{inp.name}' has shape {list(inp.dims)}; pass input_shape (without batch) "
                              f"with {len(dims) - 1} integer dims")
        dtype = NP_DTYPES.get(inp.type)
        if dtype is None:
            raise ConfigError(f"input '{inp.name}' has unsupported type {inp.type}; valid: {sorted(NP_DTYPES)}")
        shape = [int(lead), *(int(d) for d in rest)]  # type: ignore[arg-type]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds
