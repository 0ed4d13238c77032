"""Vectorised group reductions and in-place updates (internal base class of ``GroupSet``).

Per segment (one parameter viewed as ``view_shape``): squares are summed over ``reduce_dims`` and
``index_add``-ed into a (G,) float64 accumulator; scaling gathers a per-cell factor from a (G+1,)
table (entry 0 = 1 for ungrouped cells) and multiplies the view in place with broadcasting. Cost:
one pass over each grouped parameter, no Python loop over groups.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwprune.groups.segments import Segment

__all__ = ["GroupOps", "cells_of_scope"]


@dataclass
class _Prepared:
    seg: Segment
    sel: Tensor | None  # flat cell positions of grouped cells (None: every cell is grouped)
    gsel: Tensor  # group id of each selected cell
    gid1: Tensor  # gid + 1, reduced shape (gather index into the (G+1,) factor table)


class GroupOps:
    """Reductions and in-place updates over disjoint groups; see ``hwprune.groups.groupset.GroupSet``."""

    def __init__(self, params: Mapping[str, nn.Parameter], segments: Sequence[Segment], num_groups: int) -> None:
        self.num_groups = int(num_groups)
        self.params: dict[str, nn.Parameter] = {}
        self._prep: list[_Prepared] = []
        numel = torch.zeros(self.num_groups, dtype=torch.long)
        for seg in segments:
            if seg.param not in params:
                raise AssertionError(f"segment parameter {seg.param} is not a parameter of the model")
            p = params[seg.param]
            if p.numel() != int(torch.tensor(seg.view_shape).prod()) or not p.is_contiguous():
                raise AssertionError(f"parameter {seg.param} {tuple(p.shape)} cannot be viewed as {seg.view_shape}")
            flat = seg.gid.reshape(-1)
            valid = flat >= 0
            if bool(valid.all()):
                sel, gsel = None, flat
            else:
                sel = torch.nonzero(valid).flatten()
                gsel = flat[sel]
            self.params[seg.param] = p
            self._prep.append(_Prepared(seg, sel, gsel, seg.gid + 1))
            numel.index_add_(0, gsel, torch.full_like(gsel, seg.cell_size()))
        self.numel: Tensor = numel
        self.param_names: tuple[str, ...] = tuple(s.param for s in segments)
        if self.num_groups and bool((numel == 0).any()):
            raise AssertionError("a group has no elements")

    # ------------------------------------------------------------------ reductions
    def _reduce(self, pr: _Prepared, x: Tensor) -> Tensor:
        v = x.reshape(pr.seg.view_shape)
        if pr.seg.reduce_dims:
            v = v.sum(dim=pr.seg.reduce_dims, keepdim=True)
        flat = v.reshape(-1)
        return flat if pr.sel is None else flat[pr.sel]

    def _tensor(self, name: str, tensors: Mapping[str, Tensor] | None) -> Tensor:
        if tensors is not None and name in tensors:
            return tensors[name].detach()
        return self.params[name].detach()

    def _selected(self, only: Collection[str] | None) -> list[_Prepared]:
        """The prepared segments of the parameters in ``only`` (every segment when None)."""
        return self._prep if only is None else [pr for pr in self._prep if pr.seg.param in only]

    def sq_norms(self, tensors: Mapping[str, Tensor] | None = None, *, only: Collection[str] | None = None) -> Tensor:
        """(G,) float64 squared group norms over every coupled slice; ``tensors`` substitutes parameters.

        ``only``: restrict the sum to these parameter names (groups without such slices get 0).
        """
        acc = torch.zeros(self.num_groups, dtype=torch.float64)
        for pr in self._selected(only):
            x = self._tensor(pr.seg.param, tensors).to(torch.float64)
            acc.index_add_(0, pr.gsel, self._reduce(pr, x * x))
        return acc

    def norms(self, tensors: Mapping[str, Tensor] | None = None, *, only: Collection[str] | None = None) -> Tensor:
        """(G,) float64 group L2 norms (``only``: over these parameters' slices)."""
        return self.sq_norms(tensors, only=only).sqrt()

    def numel_of(self, only: Collection[str]) -> Tensor:
        """(G,) long number of elements each group has in the parameters named in ``only``."""
        out = torch.zeros(self.num_groups, dtype=torch.long)
        for pr in self._selected(only):
            out.index_add_(0, pr.gsel, torch.full_like(pr.gsel, pr.seg.cell_size()))
        return out

    def dot(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor] | None = None, *,
            only: Collection[str] | None = None) -> Tensor:
        """(G,) float64 per-group inner products ``<a_G, b_G>`` (``b`` defaults to the parameters)."""
        acc = torch.zeros(self.num_groups, dtype=torch.float64)
        for pr in self._selected(only):
            name = pr.seg.param
            if name not in a:
                raise KeyError(f"dot: tensor for parameter {name} missing")
            x = a[name].detach().to(torch.float64)
            y = self._tensor(name, b).to(torch.float64)
            acc.index_add_(0, pr.gsel, self._reduce(pr, x * y))
        return acc

    def nonzero(self, tol: float = 0.0) -> Tensor:
        """(G,) bool: group norm > ``tol``."""
        return self.norms() > tol

    # ------------------------------------------------------------------ in-place updates
    def _factor_table(self, factors: Tensor) -> Tensor:
        factors = torch.as_tensor(factors).detach().to(torch.float64).reshape(-1)
        if factors.numel() != self.num_groups:
            raise ValueError(f"expected {self.num_groups} factors, got {factors.numel()}")
        return torch.cat([torch.ones(1, dtype=torch.float64), factors])

    def scale_(self, factors: Tensor, *, only: Collection[str] | None = None) -> None:
        """Multiply every element of group i by ``factors[i]`` (in place, one multiply per parameter).

        ``only``: scale just the slices in these parameters (the others are left as they are).
        """
        table = self._factor_table(factors)
        with torch.no_grad():
            for pr in self._selected(only):
                p = self.params[pr.seg.param]
                p.view(pr.seg.view_shape).mul_(table[pr.gid1].to(p.dtype))

    def _mask_(self, tensors: Mapping[str, Tensor], drop_table: Tensor) -> None:
        with torch.no_grad():
            for pr in self._prep:
                t = tensors.get(pr.seg.param)
                if t is not None:
                    t.view(pr.seg.view_shape).masked_fill_(drop_table[pr.gid1], 0)

    def zero_(self, group_ids: Tensor | Sequence[int]) -> None:
        """Set every element of the given groups to exactly 0 (all coupled slices)."""
        ids = torch.as_tensor(group_ids, dtype=torch.long).reshape(-1)
        drop = torch.zeros(self.num_groups + 1, dtype=torch.bool)
        drop[ids + 1] = True
        self._mask_(self.params, drop)

    def apply_mask_(self, tensors: Mapping[str, Tensor], keep: Tensor) -> None:
        """Zero the elements of groups with ``keep[i] == False`` in ``tensors`` (e.g. momentum buffers)."""
        keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1)
        if keep.numel() != self.num_groups:
            raise ValueError(f"keep must have {self.num_groups} entries, got {keep.numel()}")
        self._mask_(tensors, torch.cat([torch.zeros(1, dtype=torch.bool), ~keep]))


def cells_of_scope(gs: GroupOps, scope: int) -> tuple[list[tuple[str, Tensor, Tensor, Tensor]], int, int]:
    """Row layout of one scope: ``[(param, flat_idx (n, c), row (n,), cols (n, c))], m_s, s_max``.

    Rows follow group id order within the scope; a group's cells are laid out segment by segment.
    """
    in_scope = gs.scope_index == int(scope)  # type: ignore[attr-defined]
    m_s = int(in_scope.sum())
    pos = gs.pos_in_scope  # type: ignore[attr-defined]
    offset = torch.zeros(max(m_s, 1), dtype=torch.long)
    out = []
    for pr in gs._prep:
        cell_ok = in_scope[pr.gsel]
        if not bool(cell_ok.any()):
            continue
        cell_pos = (pr.sel[cell_ok] if pr.sel is not None else torch.nonzero(cell_ok).flatten())
        row = pos[pr.gsel[cell_ok]]
        seg = pr.seg
        keep_dims = [d for d in range(len(seg.view_shape)) if d not in seg.reduce_dims]
        elem = torch.arange(int(torch.tensor(seg.view_shape).prod())).view(seg.view_shape)
        elem = elem.permute(*keep_dims, *seg.reduce_dims).reshape(-1, seg.cell_size())[cell_pos]
        order = torch.sort(row, stable=True).indices
        row_s = row[order]
        first = torch.searchsorted(row_s, row_s, right=False)
        rank = torch.empty_like(row)
        rank[order] = torch.arange(row.numel()) - first
        c = seg.cell_size()
        start = offset[row] + rank * c
        cols = start.unsqueeze(1) + torch.arange(c)
        out.append((seg.param, elem, row, cols))
        offset.index_add_(0, row, torch.full_like(row, c))
    s_max = int(offset.max()) if m_s else 0
    return out, m_s, s_max
