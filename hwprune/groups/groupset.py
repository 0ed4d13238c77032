"""``GroupSet``: disjoint groups over a model's parameters, with their scopes, weights and metadata.

Built by ``hwprune.groups.build.build_groups`` (which documents the granularities, weights and scopes).
All reductions are one vectorised pass per parameter (float64 accumulation, see ``ops``).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hwprune.base.checks import check_sparsity
from hwprune.base.errors import ConfigError
from hwprune.groups.ops import GroupOps, cells_of_scope
from hwprune.groups.segments import Entry, Layout

__all__ = ["GroupInfo", "GroupSet", "PHASES"]

log = logging.getLogger(__name__)

PHASES = ("structured", "nm")


@dataclass(frozen=True)
class GroupInfo:
    """One group of a ``GroupSet``.

    ``channels``: root-channel indices (removable channel kinds); ``(c, i, j)`` position in
    ``W[:, c, i, j]`` (kernel_shape); weight index (unstructured); ``(out, in, kernel_pos)`` (nm);
    ``()`` for a layer group. ``scope`` indexes ``GroupSet.scope_names``.
    """

    id: int
    kind: str
    scope: int
    root_module: str
    modules: tuple[str, ...]
    channels: tuple[int, ...]
    weight: float
    removable: bool
    numel: int


class GroupSet(GroupOps):
    """Disjoint groups over a model's parameters (held by reference; operations act in place).

    Attributes (G groups, S scopes): ``weights`` (G,) float64 mean 1 per scope; ``scope_index``
    (G,) long; ``scope_sizes`` (S,) long; ``removable`` (G,) bool; ``param_names``; ``ungrouped``;
    ``scope_k`` (S,) long fixed k per scope (nm phase: N) or None; ``dense``: layers left dense and why.
    """

    def __init__(self, model: nn.Module, layout: Layout, *, phase: str, scope_mode: str = "per_layer",
                 weight_mode: str = "uniform", latency_table: Mapping[str, Any] | None = None) -> None:
        params = dict(model.named_parameters())
        super().__init__(params, layout.segments, layout.num_groups)
        self.phase = phase
        self.weight_mode = weight_mode
        self.scope_mode = scope_mode
        self.entries: tuple[Entry, ...] = tuple(sorted(layout.entries, key=lambda e: e.first))
        self.dense: tuple[dict[str, Any], ...] = tuple(layout.dense)
        self._firsts = [e.first for e in self.entries]
        grouped = set(self.param_names)
        self.ungrouped: tuple[str, ...] = tuple(n for n in params if n not in grouped)
        for n in self.ungrouped:
            log.debug("groups: parameter %s is not grouped", n)
        self.removable = torch.zeros(self.num_groups, dtype=torch.bool)
        for e in self.entries:
            self.removable[e.first:e.first + e.count] = e.removable
        self._build_scopes()
        self.weights = self._normalise(self._raw_weights(latency_table))

    # ------------------------------------------------------------------ construction helpers
    def _build_scopes(self) -> None:
        G = self.num_groups
        specs: list[tuple[str, int]] = []
        ids: dict[str, int] = {}
        scope_index = torch.empty(G, dtype=torch.long)
        k_fixed: list[Tensor] = []
        base = 0

        def named(name: str) -> int:
            nonlocal base
            if name not in ids:
                ids[name] = base
                specs.append((name, 1))
                k_fixed.append(torch.zeros(1, dtype=torch.long))
                base += 1
            return ids[name]

        for e in self.entries:
            sl = slice(e.first, e.first + e.count)
            if e.local_scope is not None:
                scope_index[sl] = base + e.local_scope
                specs.append((e.name, e.num_local_scopes))
                k_fixed.append(torch.full((e.num_local_scopes,), e.k_fixed or 0, dtype=torch.long))
                base += e.num_local_scopes
            elif e.kind == "layer":
                scope_index[sl] = named("layers")
            elif self.scope_mode == "global":
                scope_index[sl] = named("global")
            else:
                scope_index[sl] = named(e.name)
        self._scope_specs = specs
        self._scope_names: tuple[str, ...] | None = None
        self.num_scopes = base
        self.scope_index = scope_index
        self.scope_sizes = torch.bincount(scope_index, minlength=base) if G else torch.zeros(0, dtype=torch.long)
        order = torch.sort(scope_index, stable=True).indices
        starts = torch.cumsum(self.scope_sizes, 0) - self.scope_sizes
        pos = torch.empty(G, dtype=torch.long)
        pos[order] = torch.arange(G) - starts[scope_index[order]]
        self.pos_in_scope = pos
        self.m_max = int(self.scope_sizes.max()) if base else 0
        self.scope_k: Tensor | None = (torch.cat(k_fixed) if k_fixed else torch.zeros(0, dtype=torch.long)) \
            if self.phase == "nm" else None

    def _raw_weights(self, latency_table: Mapping[str, Any] | None) -> Tensor:
        G = self.num_groups
        mode = self.weight_mode
        if mode == "uniform" or self.phase == "nm":
            return torch.ones(G, dtype=torch.float64)
        if mode == "size":
            return self.numel.to(torch.float64)
        out = torch.ones(G, dtype=torch.float64)
        for e in self.entries:
            sl = slice(e.first, e.first + e.count)
            if mode == "flops":
                out[sl] = e.macs if e.macs is not None else 1.0
            elif mode == "latency":
                out[sl] = _latency_costs(e, latency_table)
            else:
                raise ConfigError(f"unknown weight_mode {mode!r}; valid: uniform, size, flops, latency")
        if bool((out <= 0).any()):
            raise ConfigError(f"weight_mode {mode}: some groups have a non-positive cost; check the model/table")
        return out

    def _normalise(self, raw: Tensor) -> Tensor:
        if self.num_groups == 0:
            return raw
        sums = torch.zeros(self.num_scopes, dtype=torch.float64).index_add_(0, self.scope_index, raw)
        mean = sums / self.scope_sizes.clamp_min(1).to(torch.float64)
        return raw / mean[self.scope_index]

    # ------------------------------------------------------------------ scopes and padding
    @property
    def scope_names(self) -> tuple[str, ...]:
        """Scope names; N:M scopes are ``"<layer>#<block>"`` (built lazily)."""
        if self._scope_names is None:
            names: list[str] = []
            for name, n in self._scope_specs:
                names.extend([name] if n == 1 and "#" not in name else [f"{name}#{i}" for i in range(n)])
            self._scope_names = tuple(names)
        return self._scope_names

    def to_padded(self, vec: Tensor, fill: float = 0.0) -> Tensor:
        """(G,) -> (S, m_max): row s holds scope s's groups in id order, padded with ``fill``."""
        out = torch.full((self.num_scopes, self.m_max), fill, dtype=vec.dtype, device=vec.device)
        out[self.scope_index, self.pos_in_scope] = vec
        return out

    def from_padded(self, mat: Tensor) -> Tensor:
        """(S, m_max) -> (G,): inverse of :meth:`to_padded` (padding dropped)."""
        return mat[self.scope_index, self.pos_in_scope]

    def k_for_sparsity(self, sparsity: float) -> Tensor:
        """(S,) long ``ceil((1 - s) * m_s)`` clamped to ``[1, m_s]`` (s = fraction of groups removed)."""
        sparsity = check_sparsity(sparsity)
        m = self.scope_sizes.to(torch.float64)
        k = torch.ceil(torch.round((1.0 - float(sparsity)) * m, decimals=9)).to(torch.long)
        return torch.minimum(k.clamp_min(1), self.scope_sizes.clamp_min(1))

    def nonzero_per_scope(self, tol: float = 0.0) -> Tensor:
        """(S,) long number of groups with norm > ``tol`` in each scope."""
        nz = self.nonzero(tol).to(torch.long)
        return torch.zeros(self.num_scopes, dtype=torch.long).index_add_(0, self.scope_index, nz)

    def rows(self, scope: int) -> Tensor:
        """(m_s, s_max) copy of scope ``scope``'s groups as rows (elements flattened, zero-padded)."""
        cells, m_s, s_max = cells_of_scope(self, scope)
        dtype = next((self.params[c[0]].dtype for c in cells), torch.float32)
        out = torch.zeros(m_s, s_max, dtype=dtype)
        for name, flat_idx, row, cols in cells:
            out[row.unsqueeze(1), cols] = self.params[name].detach().reshape(-1)[flat_idx].to(dtype)
        return out

    def write_rows_(self, scope: int, rows: Tensor) -> None:
        """Write a (m_s, s_max) matrix (as from :meth:`rows`) back into the parameters in place."""
        cells, m_s, s_max = cells_of_scope(self, scope)
        if tuple(rows.shape) != (m_s, s_max):
            raise ValueError(f"rows for scope {scope} must have shape ({m_s}, {s_max}), got {tuple(rows.shape)}")
        with torch.no_grad():
            for name, flat_idx, row, cols in cells:
                p = self.params[name]
                p.view(-1)[flat_idx] = rows[row.unsqueeze(1), cols].to(p.dtype)

    # ------------------------------------------------------------------ metadata
    def _entry_of(self, gid: int) -> Entry:
        if not 0 <= gid < self.num_groups:
            raise IndexError(f"group id {gid} out of range [0, {self.num_groups})")
        return self.entries[bisect.bisect_right(self._firsts, gid) - 1]

    def _coords(self, e: Entry, local: int) -> tuple[int, ...]:
        if e.channels is not None:
            return tuple(e.channels[local])
        if e.kind == "nm":
            k, cb, rs, m = _unravel(local, e.coord_shape)
            return (k, cb * e.coord_shape[3] + m, rs)
        return _unravel(local, e.coord_shape)

    def origin(self, group_id: int) -> tuple[str, tuple[int, ...]]:
        """``(root_module_name, channel_indices)`` for surgery (``DG.get_pruning_group(root, fn, channels)``)."""
        e = self._entry_of(int(group_id))
        return e.name, self._coords(e, int(group_id) - e.first)

    @property
    def groups(self) -> tuple[GroupInfo, ...]:
        """One ``GroupInfo`` per group (built on first access; millions for nm -- prefer ``summary``)."""
        if getattr(self, "_groups", None) is None:
            w = self.weights.tolist()
            sc = self.scope_index.tolist()
            nu = self.numel.tolist()
            out = []
            for e in self.entries:
                for i in range(e.count):
                    g = e.first + i
                    out.append(GroupInfo(g, e.kind, sc[g], e.name, e.modules, self._coords(e, i), w[g],
                                         e.removable, nu[g]))
            self._groups = tuple(out)
        return self._groups

    def summary(self) -> list[dict[str, Any]]:
        """Per layer / coupled set: granularity, groups, elements, d_i range, scope, note."""
        rows = []
        for e in self.entries:
            sl = slice(e.first, e.first + e.count)
            d = self.weights[sl]
            scope = (f"{e.num_local_scopes} blocks" if e.local_scope is not None
                     else self.scope_names[int(self.scope_index[e.first])])
            rows.append({"layer": e.name, "kind": e.kind, "granularity": e.granularity, "groups": e.count,
                         "elements": int(self.numel[sl].sum()), "d_min": float(d.min()), "d_max": float(d.max()),
                         "scope": scope, "removable": e.removable, "modules": list(e.modules), "note": e.note})
        return rows

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable description: layers, per-group records of removable groups, dense layers.

        Mask groups (kernel_shape, unstructured, nm) are described per layer by their id range
        (``first``, ``groups``); removable groups individually (root module, channels, kind, scope).
        """
        layers = self.summary()
        for row, e in zip(layers, self.entries, strict=False):
            row["first"] = e.first
            row["consumers"] = list(e.consumers)
        names = self.scope_names
        groups = []
        for e in self.entries:
            if not e.removable:
                continue
            for i in range(e.count):
                g = e.first + i
                groups.append({"id": g, "kind": e.kind, "root_module": e.name, "channels": list(self._coords(e, i)),
                               "scope": names[int(self.scope_index[g])], "weight": float(self.weights[g]),
                               "numel": int(self.numel[g])})
        return {"phase": self.phase, "weight_mode": self.weight_mode, "scope_mode": self.scope_mode,
                "num_groups": self.num_groups, "num_scopes": self.num_scopes, "param_names": list(self.param_names),
                "ungrouped": list(self.ungrouped), "layers": layers, "groups": groups, "dense": list(self.dense)}


def _unravel(i: int, shape: Sequence[int]) -> tuple[int, ...]:
    out = []
    for s in reversed(shape):
        out.append(i % s)
        i //= s
    return tuple(reversed(out))


def _latency_costs(e: Entry, table: Mapping[str, Any] | None) -> Tensor:
    if table is None or e.name not in table:
        raise ConfigError(f"weight_mode latency: no latency_table entry for layer '{e.name}' "
                          f"(table has {sorted(table or {})[:8]}); measure it with hwprune.runtime.latency")
    cost = table[e.name]
    if isinstance(cost, (int, float)):
        rel = e.rel_size if e.rel_size is not None else torch.ones(e.count, dtype=torch.float64)
        return float(cost) * rel
    vals = torch.as_tensor(list(cost), dtype=torch.float64)
    if vals.shape != (e.count,):
        raise ConfigError(f"latency_table['{e.name}'] has {vals.numel()} values; layer has {e.count} groups")
    return vals
