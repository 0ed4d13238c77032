"""The fused C prox kernels against the eager reference of hwprune.sparsity.wgsef (skipped without a C compiler)."""

from __future__ import annotations

import pytest
import torch

from hwprune.sparsity import fused, wgsef

pytestmark = pytest.mark.numerics


@pytest.fixture(autouse=True)
def _kernel() -> None:
    """Skip without a C compiler; build the kernel inside the test's isolated cache directory (conftest)."""
    if not fused.available():
        pytest.skip("no C compiler: the fused prox kernel is not built")

F64 = torch.float64
F64_RTOL = 1e-11  # kernel vs eager, float64 data (same formulas, different summation order / root finder)
F32_RTOL = 2e-5  # float32 data: the kernel applies the 2:4 factors in float32
LAMS = (0.0, 0.01, 0.3, 2.0)


def _blocks(rows: int, m: int, n: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(rows, m, dtype=F64, generator=gen) * 10 ** (torch.rand(rows, 1, dtype=F64, generator=gen) * 2 - 1)
    b[::3, 1] = 0.0
    b[::4, : m - n] = 0.0  # rows with <= n nonzeros (ridge)
    b[::5, 2] = -b[::5, 0]  # ties
    b[7] = 0.0
    return b.to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, ref: torch.Tensor) -> bool:
    scale = max(1.0, float(ref.abs().max()))
    return float((a.double() - b.double()).abs().max()) <= rtol * scale


def _eager_nm(blocks: torch.Tensor, n: int, lam: float, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    with monkeypatch.context() as mp:
        mp.setenv("HWPRUNE_PROX_KERNEL", "off")
        return wgsef.prox_nm(blocks, n, lam)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 16), (2, 32)])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_nm_kernel_matches_eager(n: int, m: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks(600, m, n, seed=n * 100 + m, dtype=dtype)
    monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "on")
    for lam in LAMS:
        ref = _eager_nm(blocks, n, lam, monkeypatch)
        got = wgsef.prox_nm(blocks, n, lam)
        assert got.dtype == dtype
        assert _close(got, ref, F64_RTOL if dtype == F64 else F32_RTOL, blocks)
        assert bool(((got == 0) | (blocks != 0)).all())  # zeros stay zero
        if lam > 0:  # where the eager prox zeroes a weight, so does the kernel (exact zeros)
            assert torch.equal(got == 0, ref == 0) or dtype == torch.float32


def test_nm_kernel_rejects_non_finite_and_non_contiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "on")
    b = _blocks(50, 4, 2, 3)
    bad = b.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        wgsef.prox_nm_(bad, 2, 0.1)
    strided = _blocks(50, 8, 2, 4)[:, ::2]  # not contiguous: the eager path runs
    assert not fused.nm_applicable(strided, 2)
    assert _close(wgsef.prox_nm(strided, 2, 0.1), _eager_nm(strided, 2, 0.1, monkeypatch), F64_RTOL, strided)


@pytest.mark.parametrize("weighted", [False, True])
def test_group_scales_kernel_matches_sort(weighted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(11)
    norms = torch.rand(40, 300, dtype=F64, generator=gen) * 10 ** (torch.rand(40, 1, dtype=F64, generator=gen) * 3)
    norms[::3, 5:20] = 0.0
    norms[::7, 1:] = 0.0  # ridge rows
    norms[2, 10] = norms[2, 11]  # ties
    d = 0.2 + 3 * torch.rand(40, 300, dtype=F64, generator=gen) if weighted else None
    k = torch.randint(1, 250, (40,), generator=gen)
    for lam in (1e-3, 0.05, 1.0, 30.0):
        monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "off")
        ref = wgsef.group_scales(norms, k, lam, d)
        monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "on")
        got = wgsef.group_scales(norms, k, lam, d)
        assert got.dtype == F64 and float((got - ref).abs().max()) <= 1e-9
        c = lam * (d if d is not None else torch.ones_like(norms))
        u = c * got / (1 - got)  # s = u / (u + c)  ->  u = c s / (1 - s)
        solved = (norms > 0).sum(-1) > k
        assert torch.allclose(u.sum(-1)[solved], k[solved].double(), atol=1e-8)


def test_auto_mode_threshold_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = fused.nm_prox_
    monkeypatch.setattr(fused, "nm_prox_", lambda b, n, lam: calls.append(b.numel()) or real(b, n, lam))
    monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "auto")
    wgsef.prox_nm_(_blocks(16, 4, 2, 1), 2, 0.1)  # small: eager
    big = torch.randn(fused.MIN_ELEMENTS // 4, 4)
    wgsef.prox_nm_(big, 2, 0.1)
    assert calls == [big.numel()]
    monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "off")
    wgsef.prox_nm_(big, 2, 0.1)
    assert calls == [big.numel()] and fused.mode() == "off"
    monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "bogus")
    assert fused.mode() == "auto"


def test_prox_inplace_large_uses_kernel_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = torch.randn(8, 512, 64, generator=torch.Generator().manual_seed(2))
    monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "off")
    ref = wgsef.prox(rows, 256, 0.05)
    monkeypatch.setenv("HWPRUNE_PROX_KERNEL", "auto")
    x = rows.clone()
    assert wgsef.prox_(x, 256, 0.05) is x
    assert _close(x, ref, F32_RTOL, rows)
    assert int((x.norm(dim=-1) > 0).sum()) >= 8 * 256
