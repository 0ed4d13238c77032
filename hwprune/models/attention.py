"""Attention modules whose heads can be pruned: the protocol, a head-pruned MultiheadAttention, head surgery.

Head groups (``hwprune.groups.heads``) and head surgery (``hwprune.surgery.remove``) work on three
layouts, described by :func:`attention_spec`:

* ``nn.MultiheadAttention`` (packed ``in_proj_weight`` ``(3E, E)``, as torchvision's ViT) and
  :class:`HeadPrunedMultiheadAttention` (what surgery turns it into);
* modules with int attributes ``num_heads`` and ``head_dim`` and separate query/key/value
  ``nn.Linear`` projections (``q_proj``/``k_proj``/``v_proj``, ``q``/``k``/``v`` or
  ``query``/``key``/``value``) plus an output ``nn.Linear`` (``out_proj``, ``o_proj``, ``proj`` or
  ``out``), whose forward reshapes with ``self.num_heads`` and ``self.head_dim``;
* the same with one packed ``qkv`` ``nn.Linear`` whose rows are ordered ``(3, num_heads, head_dim)``
  (timm's ``Attention``).

A head is the ``head_dim`` rows of each of q, k and v and the matching ``head_dim`` input columns of
the output projection. Zeroing all of them makes the head's contribution exactly zero, so removing
the head computes the same function (the scale ``1/sqrt(head_dim)`` is unchanged). Returned
attention *weights* averaged over heads do change (fewer heads are averaged).

``nn.MultiheadAttention`` cannot hold fewer heads than ``embed_dim / head_dim``, so
:func:`prune_heads` replaces it by :class:`HeadPrunedMultiheadAttention`, which keeps
``embed_dim`` (the residual width) and the call signature and has ``num_heads`` heads of
``head_dim`` (``inner_dim = num_heads * head_dim``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = ["HeadSlice", "AttentionSpec", "attention_spec", "HeadPrunedMultiheadAttention", "prune_heads",
           "SPEC_HELP"]

_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("q", "k", "v"), ("query", "key", "value"))
_OUT_NAMES = ("out_proj", "o_proj", "proj", "out")
_INNER_ATTRS = ("all_head_size", "inner_dim")  # widths some implementations keep next to num_heads
SPEC_HELP = ("nn.MultiheadAttention, or a module with int num_heads and head_dim and q/k/v (or packed qkv) "
             "and out_proj/o_proj/proj Linear projections")


@dataclass(frozen=True)
class HeadSlice:
    """How one parameter splits into heads: viewed as ``view`` = ``(outer, num_heads, inner)``."""

    param: str  # name relative to the attention module
    view: tuple[int, int, int]


@dataclass(frozen=True)
class AttentionSpec:
    """Layout of one attention module: ``kind`` (mha | separate | packed), heads, and per-parameter slices."""

    kind: str
    num_heads: int
    head_dim: int
    slices: tuple[HeadSlice, ...]
    qkv: tuple[str, ...]  # projection submodules (separate/packed), empty for mha
    out: str


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    sub = getattr(module, name, None)
    return sub if isinstance(sub, nn.Linear) else None


def _rows(prefix: str, lin: nn.Linear, parts: int, h: int, d: int) -> list[HeadSlice]:
    out = [HeadSlice(f"{prefix}.weight", (parts, h, d * lin.in_features))]
    if lin.bias is not None:
        out.append(HeadSlice(f"{prefix}.bias", (parts, h, d)))
    return out


def _mha_spec(m: nn.MultiheadAttention | HeadPrunedMultiheadAttention) -> AttentionSpec | str:
    if isinstance(m, nn.MultiheadAttention):
        if m.bias_k is not None or m.add_zero_attn:
            return "MultiheadAttention with bias_k/bias_v or add_zero_attn"
        if not m._qkv_same_embed_dim:
            return "MultiheadAttention with kdim/vdim different from embed_dim"
    h, d = int(m.num_heads), int(m.head_dim)
    e_in = int(m.in_proj_weight.shape[1])
    slices = [HeadSlice("in_proj_weight", (3, h, d * e_in))]
    if m.in_proj_bias is not None:
        slices.append(HeadSlice("in_proj_bias", (3, h, d)))
    slices.append(HeadSlice("out_proj.weight", (int(m.out_proj.weight.shape[0]), h, d)))
    return AttentionSpec("mha", h, d, tuple(slices), (), "out_proj")


def attention_spec(module: nn.Module) -> AttentionSpec | str:
    """The head layout of ``module``, or a string saying why it has none (see module docstring)."""
    if isinstance(module, (nn.MultiheadAttention, HeadPrunedMultiheadAttention)):
        return _mha_spec(module)
    h, d = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if not isinstance(h, int) or not isinstance(d, int) or h < 1 or d < 1:
        return f"{type(module).__name__} has no int attributes num_heads and head_dim"
    out_name = next((n for n in _OUT_NAMES if _linear(module, n) is not None), None)
    if out_name is None:
        return f"{type(module).__name__} has no output Linear ({'/'.join(_OUT_NAMES)})"
    out = _linear(module, out_name)
    assert out is not None
    inner = h * d
    slices: list[HeadSlice] = []
    qkv: tuple[str, ...]
    packed = _linear(module, "qkv")
    if packed is not None and packed.out_features == 3 * inner:
        slices, qkv, kind = _rows("qkv", packed, 3, h, d), ("qkv",), "packed"
    else:
        names = next((t for t in _QKV_NAMES if all(_linear(module, n) is not None for n in t)), None)
        if names is None:
            return f"{type(module).__name__} has neither a packed qkv Linear of {3 * inner} rows nor q/k/v Linears"
        for n in names:
            lin = _linear(module, n)
            assert lin is not None
            if lin.out_features != inner:
                return f"{type(module).__name__}.{n} has {lin.out_features} outputs, not num_heads*head_dim={inner}"
            slices += _rows(n, lin, 1, h, d)
        qkv, kind = names, "separate"
    if out.in_features != inner:
        return f"{type(module).__name__}.{out_name} has {out.in_features} inputs, not num_heads*head_dim={inner}"
    slices.append(HeadSlice(f"{out_name}.weight", (out.out_features, h, d)))
    return AttentionSpec(kind, h, d, tuple(slices), qkv, out_name)


class HeadPrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``num_heads`` heads of ``head_dim`` on an ``embed_dim`` residual width.

    Same call as ``nn.MultiheadAttention.forward`` (self- or cross-attention, ``batch_first``,
    ``key_padding_mask``, ``attn_mask``, ``need_weights``); the inner width ``num_heads * head_dim``
    may be smaller than ``embed_dim``. Parameters: ``in_proj_weight`` ``(3*inner, embed_dim)``,
    ``in_proj_bias`` ``(3*inner,)`` or None, ``out_proj`` ``Linear(inner, embed_dim)``.
    ``kept_heads`` lists the original head of each remaining head (to slice per-head masks).
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False, kept_heads: Sequence[int] | None = None,
                 source_heads: int | None = None) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = int(embed_dim), int(num_heads), int(head_dim)
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.kept_heads = list(kept_heads) if kept_heads is not None else list(range(num_heads))
        self.source_heads = int(source_heads) if source_heads is not None else int(num_heads)
        inner = self.num_heads * self.head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, self.embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, self.embed_dim, bias=True)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @property
    def inner_dim(self) -> int:
        """Width of q, k and v: ``num_heads * head_dim``."""
        return self.num_heads * self.head_dim

    def _heads(self, x: Tensor, part: int) -> Tensor:
        """(B, T, E) -> (B, num_heads, T, head_dim) projection ``part`` (0 q, 1 k, 2 v)."""
        inner = self.inner_dim
        w = self.in_proj_weight[part * inner:(part + 1) * inner]
        b = None if self.in_proj_bias is None else self.in_proj_bias[part * inner:(part + 1) * inner]
        y = F.linear(x, w, b)
        return y.view(y.shape[0], y.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int, q_len: int, k_len: int,
              dtype: torch.dtype) -> Tensor | None:
        """Additive float mask broadcastable to (B, num_heads, L, S), or None."""
        mask: Tensor | None = None
        if attn_mask is not None:
            m = attn_mask
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            if m.dim() == 3:  # (B * source_heads, L, S): keep the rows of the remaining heads
                m = m.view(batch, self.source_heads, q_len, k_len)[:, self.kept_heads]
            mask = m.to(dtype)
        if key_padding_mask is not None:
            k = key_padding_mask
            if k.dtype == torch.bool:
                k = torch.zeros(k.shape, dtype=dtype, device=k.device).masked_fill(k, float("-inf"))
            k = k.to(dtype).view(batch, 1, 1, k_len)
            mask = k if mask is None else mask + k
        return mask

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attention of ``query`` (L tokens) over ``key``/``value`` (S tokens); see ``nn.MultiheadAttention``.

        Shapes: ``(B, L, E)`` with ``batch_first`` else ``(L, B, E)``; returns the output in the same
        layout and the attention weights ``(B, L, S)`` (averaged) / ``(B, H, L, S)`` or None.
        """
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = self._heads(query, 0), self._heads(key, 1), self._heads(value, 2)
        mask = self._mask(attn_mask, key_padding_mask, batch, q_len, k_len, q.dtype)
        p = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5)
            if is_causal and mask is None:
                causal = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(causal, float("-inf"))
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, dim=-1)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            out = F.dropout(attn, p=p, training=self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, q_len, self.inner_dim))
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _keep_rows(w: Tensor, parts: int, heads: int, keep: Sequence[int]) -> Tensor:
    """Rows of ``w`` (viewed (parts, heads, -1, ...)) for the kept heads, flattened back."""
    v = w.detach().reshape(parts, heads, -1, *w.shape[1:])[:, list(keep)]
    return v.reshape(-1, *w.shape[1:]).clone()


def _keep_cols(w: Tensor, heads: int, keep: Sequence[int]) -> Tensor:
    v = w.detach().reshape(w.shape[0], heads, -1)[:, list(keep)]
    return v.reshape(w.shape[0], -1).clone()


def _from_mha(m: nn.MultiheadAttention | HeadPrunedMultiheadAttention, keep: list[int]) -> HeadPrunedMultiheadAttention:
    h, d = int(m.num_heads), int(m.head_dim)
    kept_src = [getattr(m, "kept_heads", list(range(h)))[i] for i in keep]
    new = HeadPrunedMultiheadAttention(
        int(m.embed_dim), len(keep), d, bias=m.in_proj_bias is not None, dropout=float(m.dropout),
        batch_first=bool(m.batch_first), kept_heads=kept_src, source_heads=int(getattr(m, "source_heads", h)))
    with torch.no_grad():
        new.in_proj_weight.copy_(_keep_rows(m.in_proj_weight, 3, h, keep))
        if m.in_proj_bias is not None and new.in_proj_bias is not None:
            new.in_proj_bias.copy_(_keep_rows(m.in_proj_bias, 3, h, keep))
        new.out_proj.weight.copy_(_keep_cols(m.out_proj.weight, h, keep))
        if m.out_proj.bias is not None:
            new.out_proj.bias.copy_(m.out_proj.bias.detach())
        else:
            new.out_proj.bias = None
    new.to(m.in_proj_weight.device, m.in_proj_weight.dtype).train(m.training)
    return new


def _slice_linear(lin: nn.Linear, rows: Tensor | None, cols: Tensor | None) -> None:
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows]
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach()[rows].clone(), requires_grad=lin.bias.requires_grad)
        lin.out_features = int(w.shape[0])
    if cols is not None:
        w = w[:, cols]
        lin.in_features = int(w.shape[1])
    lin.weight = nn.Parameter(w.clone(), requires_grad=lin.weight.requires_grad)


def prune_heads(module: nn.Module, remove: Sequence[int]) -> nn.Module:
    """Remove heads ``remove`` (indices into the current heads) from an attention module.

    Returns the module to put in place of ``module``: a new :class:`HeadPrunedMultiheadAttention`
    for MultiheadAttention layouts, else ``module`` itself with its projections sliced and
    ``num_heads`` (and ``all_head_size``/``inner_dim`` if present) updated.

    Raises:
        ValueError: ``module`` has no head layout, an index is out of range, or every head would go.
    """
    spec = attention_spec(module)
    if isinstance(spec, str):
        raise ValueError(f"cannot prune heads: {spec}")
    gone = sorted({int(i) for i in remove})
    if any(not 0 <= i < spec.num_heads for i in gone):
        raise ValueError(f"head indices {gone} out of range for {spec.num_heads} heads")
    keep = [i for i in range(spec.num_heads) if i not in set(gone)]
    if not keep:
        raise ValueError("cannot remove every head of an attention module")
    if not gone:
        return module
    if spec.kind == "mha":
        assert isinstance(module, (nn.MultiheadAttention, HeadPrunedMultiheadAttention))
        return _from_mha(module, keep)
    h, d = spec.num_heads, spec.head_dim
    head_rows = (torch.tensor(keep).view(-1, 1) * d + torch.arange(d)).reshape(-1)
    parts = 3 if spec.kind == "packed" else 1
    rows = (torch.arange(parts).view(-1, 1) * (h * d) + head_rows).reshape(-1)
    for name in spec.qkv:
        _slice_linear(getattr(module, name), rows, None)
    _slice_linear(getattr(module, spec.out), None, head_rows)
    old_inner = h * d
    setattr(module, "num_heads", len(keep))  # noqa: B010 - the protocol attribute read by its forward
    for attr in _INNER_ATTRS:
        if getattr(module, attr, None) == old_inner:
            setattr(module, attr, len(keep) * d)
    return module
