"""Tests of hwprune.sparsity.wgsef against METHOD.md §9: golden values, oracles and properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprune.sparsity import wgsef

pytestmark = pytest.mark.numerics  # re-run under every ATen CPU capability (make test)

RTOL = 1e-10  # float64 agreement with the oracles (relative to the input scale)
AGREE = 1e-12  # sort vs select
F32_RTOL = 2e-5
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
F64 = torch.float64


# ----------------------------------------------------------------------------- oracles (slow, loops)
def brute_sef(z: list[float], k: int) -> float:
    """S_k(z) by exhaustive saturated sets R (METHOD 9.4), no solver."""
    a = [abs(v) for v in z]
    nz = [i for i, v in enumerate(a) if v > 0]
    if len(nz) <= k:
        return 0.5 * sum(v * v for v in a)
    best = math.inf
    for r in range(k):
        for sat in itertools.combinations(nz, r):
            rest = [a[i] for i in nz if i not in sat]
            tail = sum(rest)
            if all((k - r) * v / tail <= 1 + 1e-12 for v in rest):
                best = min(best, 0.5 * sum(a[i] ** 2 for i in sat) + tail * tail / (2 * (k - r)))
    return best


def ref_prox(rows: torch.Tensor, k: float, lam: float, d: torch.Tensor | None = None) -> torch.Tensor:
    """Python loop over groups + 300-step bisection on eta (METHOD 4.3 and 3.2)."""
    m = rows.shape[0]
    d = torch.ones(m, dtype=F64) if d is None else d.to(F64)
    norms = [float(torch.linalg.vector_norm(rows[i].to(F64))) for i in range(m)]
    z = [math.sqrt(float(d[i])) * norms[i] for i in range(m)]
    act = [i for i in range(m) if z[i] >= wgsef.ZERO_NORM]
    out = torch.zeros_like(rows, dtype=F64)
    if len(act) <= k:
        for i in act:
            out[i] = rows[i].to(F64) / (1 + lam * float(d[i]))
        return out

    def u_of(eta: float, i: int) -> float:
        return min(1.0, max(0.0, z[i] * eta - lam * float(d[i])))

    lo, hi = 0.0, max((lam * float(d[i]) + 1) / z[i] for i in act)
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        if sum(u_of(mid, i) for i in act) - k < 0:
            lo = mid
        else:
            hi = mid
    for i in act:
        u = u_of(hi, i)
        out[i] = rows[i].to(F64) * (u / (u + lam * float(d[i])))
    return out


def conj(g: torch.Tensor, k: int, d: torch.Tensor) -> float:
    """S*(g) = 1/2 (sum of the k largest ||g_G||^2 / d)."""
    q = (g.to(F64).pow(2).sum(-1) / d).sort(descending=True).values
    return 0.5 * float(q[:k].sum())


def make_case(seed: int, m: int, s: int, *, ties: bool = True, zeros: bool = True, weighted: bool = True):
    g = torch.Generator().manual_seed(seed)
    scale = 10 ** (torch.rand(m, 1, generator=g, dtype=F64) * 2 - 1)
    rows = torch.randn(m, s, generator=g, dtype=F64) * scale
    if ties and m > 2:
        rows[1] = -rows[0]
    if zeros and m > 3:
        rows[m - 1] = 0.0
    d = 0.2 + 3 * torch.rand(m, generator=g, dtype=F64) if weighted else torch.ones(m, dtype=F64)
    return rows, d


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL, ref: torch.Tensor | None = None) -> bool:
    scale = max(1.0, float((ref if ref is not None else b).abs().max()) if b.numel() else 1.0)
    return float((a.to(F64) - b.to(F64)).abs().max()) <= rtol * scale if a.numel() else True


# ----------------------------------------------------------------------------- golden values (9.3)
def test_golden_values() -> None:
    t = lambda *v: torch.tensor(v, dtype=F64)  # noqa: E731
    assert wgsef.value_from_norms(t(3, 2, 1), 2).item() == pytest.approx(9.0, abs=1e-14)
    assert wgsef.value_from_norms(t(3, 1, 1), 2).item() == pytest.approx(6.5, abs=1e-14)
    assert wgsef.value(t(3, -2, 0, 1)[:, None], 1).item() == pytest.approx(18.0, abs=1e-13)
    for method in wgsef.METHODS:
        w = wgsef.prox(t(3, 2, 1)[:, None], 2, 0.5, method=method)[:, 0]
        assert torch.allclose(w, t(2, 1.25, 0.25), atol=1e-14)
        w = wgsef.prox(t(3, 2, 1)[:, None], 2, 1.0, method=method)[:, 0]
        assert torch.allclose(w, t(1.5, 1, 0), atol=1e-14) and w[2] == 0
    u_scale = wgsef.group_scales(t(3, 2, 1), 2, 0.5)
    assert torch.allclose(u_scale, t(2 / 3, 1.25 / 2, 0.25), atol=1e-14)  # u = [1, 5/6, 1/6]
    assert torch.allclose(wgsef.prox_nm(t(3, 2, 1, 0)[None], 2, 0.5), t(2, 1.25, 0.25, 0)[None], atol=1e-14)
    assert torch.allclose(wgsef.prox_nm(t(3, -2, 1, 0)[None], 2, 1.0), t(1.5, -1, 0, 0)[None], atol=1e-14)


# ----------------------------------------------------------------------------- value (9.1)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 7), s=st.integers(1, 3), k=st.integers(1, 8))
def test_value_matches_exhaustive_oracle_and_bounds(seed: int, m: int, s: int, k: int) -> None:
    rows, d = make_case(seed, m, s)
    z = d.sqrt() * rows.norm(dim=-1)
    val = wgsef.value(rows, k, d).item()
    ref = brute_sef(z.tolist(), k)
    assert abs(val - ref) <= RTOL * max(1.0, ref)
    ridge = 0.5 * float((z * z).sum())
    assert val >= ridge * (1 - 1e-12)  # 9.1.2, equality iff <= k nonzero groups
    if int((z > 0).sum()) <= k:
        assert val == pytest.approx(ridge, rel=1e-12)
    else:
        assert val > ridge * (1 + 1e-12) or ridge == 0
    l1 = float(z.sum())
    assert 0.5 * max(ridge * 2, l1 * l1 / k) <= val * (1 + 1e-12)  # 9.1.3
    assert val <= 0.5 * min(l1 * l1, (m / min(k, m)) * 2 * ridge) * (1 + 1e-12) + 1e-300


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 7))
def test_value_special_k_and_monotone(seed: int, m: int) -> None:
    rows, _ = make_case(seed, m, 1, weighted=False)
    x = rows[:, 0]
    assert wgsef.value(rows, 1).item() == pytest.approx(0.5 * float(x.abs().sum()) ** 2, rel=1e-12)
    assert wgsef.value(rows, m).item() == pytest.approx(0.5 * float((x * x).sum()), rel=1e-12)
    vals = wgsef.value(rows.expand(m, m, 1), torch.arange(1, m + 1))
    assert bool((vals[1:] <= vals[:-1] * (1 + 1e-12)).all())
    assert wgsef.value(rows, 2).item() == pytest.approx(brute_sef(x.tolist(), 2), rel=RTOL)  # SEF case


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 6), s=st.integers(1, 4), k=st.integers(1, 6))
def test_value_invariances_and_convexity(seed: int, m: int, s: int, k: int) -> None:
    rows, d = make_case(seed, m, s)
    v = wgsef.value(rows, k, d)
    assert torch.allclose(wgsef.value(2.5 * rows, k, d), 6.25 * v, rtol=1e-12)
    signs = torch.where(torch.rand(m, s, generator=torch.Generator().manual_seed(seed)) < 0.5, -1.0, 1.0)
    assert torch.allclose(wgsef.value(rows * signs.to(F64), k, d), v, rtol=1e-12)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.allclose(wgsef.value(rows[perm], k, d[perm]), v, rtol=1e-12)
    q, _ = torch.linalg.qr(torch.randn(s, s, dtype=F64, generator=torch.Generator().manual_seed(seed + 2)))
    assert torch.allclose(wgsef.value(rows @ q, k, d), v, rtol=1e-10)
    other, _ = make_case(seed + 3, m, s)
    mid = wgsef.value(0.5 * (rows + other), k, d)
    assert mid <= 0.5 * (v + wgsef.value(other, k, d)) * (1 + 1e-12) + 1e-300


# ----------------------------------------------------------------------------- prox (9.2)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 9), s=st.integers(1, 3), k=st.integers(1, 9),
       lam=st.floats(0.0, 5.0), weighted=st.booleans())
def test_prox_matches_reference_both_methods(seed: int, m: int, s: int, k: int, lam: float, weighted: bool) -> None:
    rows, d = make_case(seed, m, s, weighted=weighted)
    ref = ref_prox(rows, k, lam, d)
    out = {meth: wgsef.prox(rows, k, lam, d, method=meth) for meth in wgsef.METHODS}
    assert close(out["sort"], ref, ref=rows)
    assert close(out["sort"], out["select"], AGREE, ref=rows)
    scales = {meth: wgsef.group_scales(rows.norm(dim=-1), k, lam, d, method=meth) for meth in wgsef.METHODS}
    assert float((scales["sort"] - scales["select"]).abs().max()) <= AGREE


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 9), s=st.integers(1, 3), k=st.integers(1, 8),
       lam=st.floats(1e-3, 5.0))
def test_prox_structure(seed: int, m: int, s: int, k: int, lam: float) -> None:
    rows, d = make_case(seed, m, s)
    w = wgsef.prox(rows, k, lam, d)
    nx, nw = rows.norm(dim=-1), w.norm(dim=-1)
    nnz_in, nnz_out = int((nx > 0).sum()), int((nw > 0).sum())
    scale = wgsef.group_scales(nx, k, lam, d)
    assert torch.equal(w, rows * scale[:, None])
    assert bool((scale >= 0).all()) and bool((nw <= nx / (1 + lam * d) * (1 + 1e-12)).all())  # shrink bound
    assert bool((w * rows >= 0).all())  # signs kept
    cos = (w * rows).sum(-1)
    assert torch.allclose(cos[nw > 0], (nw * nx)[nw > 0], rtol=1e-12)  # direction kept
    if nnz_in <= k:  # 9.2.1
        assert torch.allclose(w, rows / (1 + lam * d)[:, None], rtol=1e-14, atol=0)
    else:  # 9.2.2: sum u = k, at least k survivors
        u = lam * d * scale / (1 - scale)
        assert float(u.sum()) == pytest.approx(k, abs=1e-10) and nnz_out >= k
    wu = wgsef.prox(rows, k, lam)  # constant d: order monotone
    order = nx.argsort()
    assert bool((wu.norm(dim=-1)[order].diff() >= -1e-12).all())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 7), s=st.integers(1, 3), k=st.integers(1, 7),
       lam=st.floats(1e-2, 4.0))
def test_prox_optimality_certificates(seed: int, m: int, s: int, k: int, lam: float) -> None:
    rows, d = make_case(seed, m, s)
    w = wgsef.prox(rows, k, lam, d)
    g = (rows - w) / lam
    sw = wgsef.value(w, k, d).item()
    fy = sw + conj(g, k, d) - float((w * g).sum())  # Fenchel-Young equality (9.1.7)
    assert abs(fy) <= 1e-10 * max(1.0, float((rows * rows).sum()))
    gen = torch.Generator().manual_seed(seed + 7)
    for _ in range(5):  # subgradient inequality (9.2.4)
        v = w + torch.randn(m, s, generator=gen, dtype=F64) * float(rows.abs().max() + 1)
        lhs = wgsef.value(v, k, d).item()
        assert lhs >= sw + float((g * (v - w)).sum()) - 1e-9 * max(1.0, lhs)


def test_sef_exact_k_threshold() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        x = torch.randn(8, dtype=F64, generator=gen)
        k = int(torch.randint(1, 7, (1,), generator=gen))
        a = x.abs().sort(descending=True).values
        rho = float(a[k] / a[k - 1])
        lam_star = rho / (1 - rho)
        w = wgsef.prox(x[:, None], k, lam_star * (1 + 1e-6))[:, 0]
        hk = torch.where(x.abs() >= a[k - 1], x, 0.0)
        assert int((w != 0).sum()) == k
        assert torch.allclose(w, hk / (1 + lam_star * (1 + 1e-6)), rtol=1e-12, atol=0)
        assert int((wgsef.prox(x[:, None], k, lam_star * 0.99)[:, 0] != 0).sum()) > k
        assert torch.allclose(wgsef.prox_nm(x[None], k, lam_star * (1 + 1e-6))[0], w, rtol=1e-12, atol=0)


def test_large_lambda_keeps_top_k_by_weighted_rms() -> None:
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        rows = torch.randn(10, 3, dtype=F64, generator=gen)
        d = 0.5 + torch.rand(10, dtype=F64, generator=gen)
        k = int(torch.randint(1, 9, (1,), generator=gen))
        keep = wgsef.prox(rows, k, 1e9, d).norm(dim=-1) > 0
        top = (rows.norm(dim=-1) / d.sqrt()).argsort(descending=True)[:k]
        assert set(keep.nonzero()[:, 0].tolist()) == set(top.tolist())


# ----------------------------------------------------------------------------- batching, padding, N:M
def test_batched_equals_loop_and_padding_is_neutral() -> None:
    sizes, s_max, lam = [5, 1, 8, 3], 4, 0.7
    cases = [make_case(10 + i, m, 1 + i) for i, m in enumerate(sizes)]
    ks = torch.tensor([2, 1, 3, 5])
    padded = torch.zeros(len(sizes), max(sizes), s_max, dtype=F64)
    dpad = torch.ones(len(sizes), max(sizes), dtype=F64)
    for b, (rows, d) in enumerate(cases):
        padded[b, : rows.shape[0], : rows.shape[1]] = rows
        dpad[b, : rows.shape[0]] = d
    for meth in wgsef.METHODS:
        out = wgsef.prox(padded, ks, lam, dpad, method=meth)
        vals = wgsef.value(padded, ks, dpad)
        for b, (rows, d) in enumerate(cases):
            m, s = rows.shape
            single = wgsef.prox(rows, int(ks[b]), lam, d, method=meth)
            assert close(out[b, :m, :s], single, 1e-14, ref=rows)
            assert bool((out[b, m:] == 0).all()) and bool((out[b, :, s:] == 0).all())
            assert vals[b].item() == pytest.approx(wgsef.value(rows, int(ks[b]), d).item(), rel=1e-14)
            assert close(out[b, :m, :s], ref_prox(rows, int(ks[b]), lam, d), ref=rows)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 20)])
def test_prox_nm_matches_per_row_sef(n: int, m: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wgsef, "_NM_CHUNK_ROWS", 37)  # exercise the chunk loop
    gen = torch.Generator().manual_seed(n * 100 + m)
    blocks = torch.randn(120, m, dtype=F64, generator=gen)
    blocks[::3, 1] = 0.0
    blocks[::4, : m - n] = 0.0  # rows with <= n nonzeros (ridge)
    blocks[::5, 2] = -blocks[::5, 0]  # ties
    blocks[7] = 0.0
    for lam in (0.0, 0.05, 0.6, 3.0):
        out = wgsef.prox_nm(blocks, n, lam)
        ref = torch.stack([ref_prox(r[:, None], n, lam)[:, 0] for r in blocks[:24]])  # slow oracle: a subset
        assert close(out[:24], ref, ref=blocks)
        assert close(out, wgsef.prox(blocks[..., None], n, lam)[..., 0], 1e-13, ref=blocks)
        assert bool(((out == 0) | (blocks != 0)).all())
    f32 = blocks.float()
    out32 = wgsef.prox_nm(f32, n, 0.6)
    assert out32.dtype == torch.float32 and close(out32, wgsef.prox_nm(blocks, n, 0.6), F32_RTOL, ref=blocks)
    inplace = f32.clone()
    assert wgsef.prox_nm_(inplace, n, 0.6) is inplace and torch.equal(inplace, out32)


# ----------------------------------------------------------------------------- dtype, edge cases, errors
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 8), s=st.integers(1, 4), k=st.integers(1, 8),
       lam=st.floats(0.0, 3.0))
def test_float32_input(seed: int, m: int, s: int, k: int, lam: float) -> None:
    rows, d = make_case(seed, m, s)
    out = wgsef.prox(rows.float(), k, lam, d.float())
    assert out.dtype == torch.float32 and out.shape == rows.shape
    assert close(out, ref_prox(rows.float().double(), k, lam, d), F32_RTOL, ref=rows)
    assert wgsef.group_scales(rows.float().norm(dim=-1), k, lam).dtype == F64


def test_edge_cases() -> None:
    zero = torch.zeros(4, 3, dtype=F64)
    assert bool((wgsef.prox(zero, 2, 1.0) == 0).all()) and wgsef.value(zero, 2).item() == 0
    rows, d = make_case(1, 5, 2, zeros=False)
    assert torch.equal(wgsef.prox(rows, 2, 0.0), rows)  # lam = 0: identity
    assert torch.allclose(wgsef.prox(rows, 9, 0.5, d), rows / (1 + 0.5 * d)[:, None], rtol=1e-15)  # k >= m
    tiny = rows.clone()
    tiny[3] = 1e-40
    assert bool((wgsef.prox(tiny, 2, 0.5)[3] == 0).all())
    ref = wgsef.prox(torch.cat([rows[:3], rows[4:]]), 2, 0.5)
    assert torch.allclose(torch.cat([wgsef.prox(tiny, 2, 0.5)[:3], wgsef.prox(tiny, 2, 0.5)[4:]]), ref, rtol=1e-14)
    big = rows.float() * 1e19  # float32 norms overflow: recomputed in float64
    assert torch.isfinite(wgsef.prox(big, 2, 0.5)).all()
    x = rows.clone()
    assert wgsef.prox_(x, 2, 0.5, d) is x and torch.equal(x, wgsef.prox(rows, 2, 0.5, d))
    ties = torch.ones(6, 2, dtype=F64)
    out = wgsef.prox(ties, 2, 0.3)
    assert torch.allclose(out, out[:1].expand(6, 2), rtol=1e-15) and bool((out > 0).all())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: wgsef.prox(r, 0, 1.0), "k must be >= 1, got 0"),
        (lambda r: wgsef.value(r, torch.tensor(0.5)), "k must be >= 1"),
        (lambda r: wgsef.prox(r, 2, -1.0), "lam must be"),
        (lambda r: wgsef.prox(r, 2, float("nan")), "lam must be"),
        (lambda r: wgsef.prox(r.index_fill(0, torch.tensor([1]), float("nan")), 2, 1.0), "finite"),
        (lambda r: wgsef.prox(r, 2, 1.0, torch.tensor([1.0, 0.0, 1.0, 1.0])), "weights"),
        (lambda r: wgsef.prox(r, 2, 1.0, torch.tensor([1.0, float("inf"), 1.0, 1.0])), "weights"),
        (lambda r: wgsef.prox(r, 2, 1.0, torch.ones(3)), "weights must have shape"),
        (lambda r: wgsef.prox(r[None].expand(2, 4, 3), torch.tensor([1, 2, 3]), 1.0), "k must be"),
        (lambda r: wgsef.prox(r[0], 2, 1.0), "rows must be"),
        (lambda r: wgsef.prox(r, 2, 1.0, method="bisect"), "method must be one of"),
        (lambda r: wgsef.group_scales(-r[:, 0], 2, 1.0), "norms must be >= 0"),
        (lambda r: wgsef.prox_nm(r, 0, 1.0), "n must be"),
        (lambda r: wgsef.prox_nm(r[0], 1, 1.0), "blocks must be"),
        (lambda r: wgsef.prox_nm(r.index_fill(0, torch.tensor([1]), float("inf")), 1, 1.0), "finite"),
    ],
)
def test_errors(call, match: str) -> None:  # type: ignore[no-untyped-def]
    rows = torch.arange(12, dtype=F64).reshape(4, 3) + 1
    with pytest.raises(ValueError, match=match):
        call(rows)
