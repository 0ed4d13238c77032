"""Find the width staircase of a measured latency curve: the multiple ``b`` whose widths are the efficient ones.

Input: a layer's latency at consecutive widths ``w_lo .. w_hi`` (step 1), measured in ``R``
interleaved rounds (``times[r, i]`` ms); the curve is the median over rounds. Runtimes process
channels ``B`` at a time (SIMD registers, blocked layouts such as ORT's NCHWc, GEMM tiles): a width
between two multiples of ``B`` then costs like the next multiple (a flat staircase, typical of
GPU tiles) or even more (a sawtooth: ORT CPU leaves its fast blocked kernels when the channel count
is not a multiple of the block). Either way, rounding a width UP to a multiple of ``B`` costs
(almost) nothing, while on a width-linear curve it costs the added channels' share of the slope.

Test for a power-of-two candidate ``b >= 2`` with ``h = b / 2``: over the widths ``w = h (mod b)``,
the mean cost of going up to the next multiple of ``b``, relative to what ``h`` channels cost on the
slope ``s`` of the curve restricted to the multiples of ``b``:

    rho(b) = mean_{w = h mod b} (t(w + h) - t(w)) / (h s)

``rho ~ 1`` on a linear curve, ``~ 0`` on a flat staircase, ``< 0`` on a sawtooth. ``b`` is valid if
``rho(b) <= MAX_RHO``; the block is the largest ``b`` such that every power of two up to ``b`` is
valid (1 when 2 is not). Multiples of the block are the efficient widths.

Ambiguity: the decision is repeated on ``BOOTSTRAP`` resamples of the rounds (fixed seed: the same
data always gives the same answer); if fewer than ``CONFIDENCE`` of them agree, or the latency does
not follow width beyond the noise (``FLAT_NOISE``), the result is ``ambiguous`` and says why.
Pure numpy; no timing here (``hwprune.runtime.calibrate`` measures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwprune.base.errors import ConfigError

__all__ = ["CANDIDATES", "MAX_RHO", "CONFIDENCE", "BOOTSTRAP", "FLAT_NOISE", "Staircase", "rounding_cost",
           "find_staircase", "step_width", "step_cost"]

CANDIDATES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
MAX_RHO = 0.5  # rounding up half a block may cost at most this share of what those channels cost on the slope
CONFIDENCE = 0.9  # share of bootstrap resamples that must agree for an unambiguous block
BOOTSTRAP = 200
FLAT_NOISE = 3.0  # total rise below FLAT_NOISE x the curve's noise: latency does not follow width here
_MIN_STEPS = 3  # a candidate needs this many steps inside the measured range
_SEED = 0


@dataclass
class Staircase:
    """Result for one layer kind: ``block`` (1 = no staircase), ``rho`` per candidate, confidence.

    ``ambiguous`` is True when the measurement does not settle the block; ``reason`` says why and
    ``alternatives`` lists the other blocks the resamples chose (block -> share of resamples).
    """

    block: int
    rho: dict[int, float]
    confidence: float
    ambiguous: bool
    reason: str
    spread: float
    rise_ms: float
    alternatives: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (int keys as strings)."""
        return {"block": self.block, "rho": {str(k): v for k, v in self.rho.items()},
                "confidence": self.confidence, "ambiguous": self.ambiguous, "reason": self.reason,
                "spread": self.spread, "rise_ms": self.rise_ms,
                "alternatives": {str(k): v for k, v in self.alternatives.items()}}


def _candidates(widths: np.ndarray, candidates: Sequence[int]) -> list[int]:
    span = int(widths[-1] - widths[0])
    return [int(b) for b in candidates if b == 1 or span >= _MIN_STEPS * b]


def rounding_cost(widths: Sequence[int] | np.ndarray, curve: Sequence[float] | np.ndarray, b: int) -> float:
    """``rho(b)`` of the module docstring (nan when the curve has no positive slope on the multiples of ``b``)."""
    w = np.asarray(widths, dtype=np.int64)
    t = np.asarray(curve, dtype=np.float64)
    h = int(b) // 2
    if h < 1:
        return 0.0
    lattice = w % int(b) == 0
    if int(lattice.sum()) < 2:
        return float("nan")
    slope = float(np.polyfit(w[lattice].astype(np.float64), t[lattice], 1)[0])
    lo = int(w[0])
    starts = [i for i in range(w.size) if w[i] % b == h and i + h < w.size]
    if slope <= 0 or not starts:
        return float("nan")
    gain = float(np.mean([t[i + h] - t[i] for i in starts]))
    return gain / (h * slope) if lo >= 0 else float("nan")


def _decide(widths: np.ndarray, curve: np.ndarray, cands: list[int]) -> tuple[int, dict[int, float]]:
    rhos = {b: rounding_cost(widths, curve, b) for b in cands}
    block = 1
    for b in sorted(cands):
        if b == 1:
            continue
        if b != 2 * block or not rhos[b] <= MAX_RHO:  # nan (no slope) is not valid
            break
        block = b
    return block, rhos


def find_staircase(widths: Sequence[int], times: Sequence[Sequence[float]] | np.ndarray, *,
                   candidates: Sequence[int] = CANDIDATES, bootstrap: int = BOOTSTRAP) -> Staircase:
    """The staircase block of one curve (see the module docstring).

    Args:
        widths: consecutive integer widths (step 1), increasing.
        times: ``(R, len(widths))`` latencies in ms, one row per interleaved round (R >= 1).
        candidates: blocks to consider (1 is always one of them).
        bootstrap: resamples of the rounds for the confidence (0: no resampling, confidence 1).

    Raises:
        ConfigError: widths not consecutive, shapes that do not match, fewer than 2 widths.
    """
    w = np.asarray(widths, dtype=np.int64)
    t = np.asarray(times, dtype=np.float64)
    if t.ndim == 1:
        t = t[None]
    if w.ndim != 1 or w.size < 2 or t.shape[1:] != w.shape or t.shape[0] < 1:
        raise ConfigError(f"staircase needs >= 2 widths and times of shape (rounds, {w.size}); got {t.shape}")
    if not bool((np.diff(w) == 1).all()):
        raise ConfigError("staircase needs consecutive widths (step 1)")
    if not bool(np.isfinite(t).all()) or bool((t <= 0).any()):
        raise ConfigError("staircase needs finite positive latencies")
    cands = _candidates(w, sorted({1, *candidates}))
    curve = np.median(t, axis=0)
    block, rhos = _decide(w, curve, cands)
    # noise of the median curve: spread between rounds, relative to the curve (median over widths)
    if t.shape[0] > 1:
        q75, q25 = np.percentile(t, [75, 25], axis=0)
        noise = float(np.median((q75 - q25) / curve)) / np.sqrt(t.shape[0])
    else:
        noise = float(np.median(np.abs(np.diff(curve, 2)) / curve[1:-1])) if w.size > 2 else 0.0
    rise = float(np.polyfit(w.astype(np.float64), curve, 1)[0]) * float(w[-1] - w[0])  # fitted rise over the sweep
    level = float(np.median(curve))
    spread = float(np.median((t.max(0) - t.min(0)) / curve)) if t.shape[0] > 1 else 0.0
    votes: dict[int, int] = {}
    rng = np.random.default_rng(_SEED)
    n_boot = int(bootstrap) if t.shape[0] > 1 else 0
    for _ in range(n_boot):
        sample = t[rng.integers(0, t.shape[0], t.shape[0])]
        b_s, _ = _decide(w, np.median(sample, axis=0), cands)
        votes[b_s] = votes.get(b_s, 0) + 1
    confidence = votes.get(block, 0) / n_boot if n_boot else 1.0
    alternatives = {b: v / n_boot for b, v in sorted(votes.items()) if b != block}
    nxt = 2 * block
    why = f"rho({nxt}) = {rhos[nxt]:.2f} > {MAX_RHO:g}" if nxt in rhos else f"largest candidate {block}"
    reason = f"block {block} ({why}), chosen by {confidence:.0%} of {n_boot} resamples"
    ambiguous = False
    if rise <= FLAT_NOISE * max(noise, 1e-12) * level:
        ambiguous = True
        reason = (f"latency rises only {rise:.4g} ms over widths {int(w[0])}-{int(w[-1])} (noise "
                  f"{noise:.1%} of {level:.4g} ms): it does not follow width here")
    elif confidence < CONFIDENCE:
        ambiguous = True
        alt = ", ".join(f"{b} ({v:.0%})" for b, v in alternatives.items())
        reason = f"{reason}; resamples also chose {alt}: the spread leaves the block ambiguous"
    return Staircase(block=block, rho=rhos, confidence=confidence, ambiguous=ambiguous, reason=reason,
                     spread=spread, rise_ms=rise, alternatives=alternatives)


def step_width(width: float, block: int, full: int | None = None) -> int:
    """The efficient width a layer of ``width`` channels costs like: ``ceil(width / block) * block``, <= ``full``."""
    if block < 1:
        raise ConfigError(f"block must be >= 1, got {block}")
    w = int(np.ceil(float(width) / block - 1e-9)) * int(block)
    return min(max(w, 1), int(full)) if full is not None else max(w, 1)


def step_cost(widths: Sequence[int], ms: Sequence[float], width: float, block: int) -> float:
    """Latency (ms) of ``width`` on a staircase: the measured curve interpolated at ``step_width(width)``."""
    full = int(max(widths))
    return float(np.interp(step_width(width, block, full), np.asarray(widths, float), np.asarray(ms, float)))
