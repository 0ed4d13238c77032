"""Surgery as a step of a run: compact model, equivalence check, ``surgery_plan.json`` + ``prune_summary.json``.

The train job calls :func:`compact_run_model` right after the top-k projection (the fine-tune then
trains the compact model); ``hwprune prune RUN_DIR`` calls it for a run whose fine-tune ran on the
masked model (``compact_finetune: false``). Either way the equivalence check of
``hwprune.surgery.remove.remove_zero_groups`` runs on random inputs and the run's example images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from hwprune.base.errors import ConfigError, HwpruneError
from hwprune.groups import build_groups
from hwprune.groups.groupset import GroupSet
from hwprune.models.complexity import count_params_and_macs
from hwprune.profiles import HardwareProfile
from hwprune.surgery.remove import SurgeryPlan, remove_zero_groups
from hwprune.training.artifacts import SurgerySummary
from hwprune.training.rundir import RunDir

__all__ = ["compact_run_model", "surgery_groups", "alignment_warnings"]


def surgery_groups(model: nn.Module, profile: HardwareProfile, rd: RunDir, *, what: str) -> GroupSet:
    """Structured groups of ``model`` under the run's profile, with uniform weights.

    Weights do not matter for surgery or for a mask-fixed fine-tune (and ``weight_mode: latency``
    would need the latency table again). Channel blocks are cut in norm order, so the zero channels
    of a masked model form whole blocks whichever partition its training used. A profile that no
    longer fits the model is one ConfigError.
    """
    try:
        return build_groups(model, dataclasses.replace(profile, weight_mode="uniform"), rd.example_input(),
                            phase="structured", block_order="norm")
    except HwpruneError as exc:
        raise ConfigError(f"{rd.root}: cannot group the {what} under profile '{profile.name}': {exc}") from exc


def compact_run_model(model: nn.Module, groupset: GroupSet, rd: RunDir, *,
                      val_accuracy: Callable[[nn.Module], float | None], after_finetune: bool,
                      ) -> tuple[nn.Module, SurgeryPlan, SurgerySummary]:
    """Remove the zero groups of ``model``; write the plan and the summary; return ``(compact, plan, summary)``.

    Args:
        model: the masked model (exact-zero groups; left untouched: it is the reference).
        groupset: its structured groups.
        rd: the run (example input, where to write).
        val_accuracy: ``model -> validation accuracy`` (None without a validation split).
        after_finetune: recorded in the summary (was ``model`` already fine-tuned?).

    Raises:
        SurgeryEquivalenceError: the compact model's outputs differ (every mismatch listed).
    """
    example = rd.example_input()
    compact, plan = remove_zero_groups(model, groupset, example, check_inputs=[rd.example_batch()])
    p0, m0 = count_params_and_macs(model, example)
    p1, m1 = count_params_and_macs(compact, example)
    summary = SurgerySummary(
        params={"sparse": p0, "pruned": p1}, macs={"sparse": m0, "pruned": m1},
        val_accuracy={"sparse": val_accuracy(model), "pruned": val_accuracy(compact)},
        removed_channels=plan.removed_channels,
        max_abs_diff=max((float(r.get("max_abs", 0.0)) for r in plan.equivalence), default=0.0),
        after_finetune=after_finetune)
    rd.write_surgery(plan.to_dict(), summary)
    return compact, plan, summary


def alignment_warnings(layers: list[dict[str, Any]], widths: list[dict[str, Any]], alignment: int) -> list[str]:
    """Warnings for granularity fallbacks and kept widths that lost the profile's alignment.

    Args:
        layers: ``GroupSet.summary()`` rows (``layer``, ``note``; a fallback is noted there).
        widths: the surgery plan's widths rows (``module``, ``before``, ``after``); may be empty.
        alignment: the profile's channel block (``HardwareProfile.alignment``; 1: nothing to lose).

    Returns:
        One sentence per affected layer (empty when every pruned width is a multiple of ``alignment``).
    """
    out: list[str] = []
    notes = {str(r.get("layer")): str(r.get("note") or "") for r in layers}
    for layer, note in notes.items():
        if "fallback" in note and alignment > 1:
            out.append(f"layer {layer}: {note} (its width is not a multiple of the profile's block of {alignment})")
    for w in widths:
        before, after = int(w.get("before", 0)), int(w.get("after", 0))
        if alignment > 1 and after != before and after % alignment:
            out.append(f"layer {w.get('module')}: kept width {after} (from {before}) is not a multiple of "
                       f"{alignment}: the profile's alignment is lost there (marked '!' in plots/widths.png)")
    return out
