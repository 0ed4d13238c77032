"""Which rule of a profile applies to a module: the first match of a phase, and rules matching nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hwprune.profiles.schema import HardwareProfile, LayerRule

__all__ = ["match_rule", "rule_matches", "unmatched_rules"]


def rule_matches(rule: LayerRule, name: str, type_names: Sequence[str]) -> bool:
    """Function form of :meth:`LayerRule.matches`."""
    return rule.matches(name, type_names)


def match_rule(profile: HardwareProfile, phase: str, name: str, type_names: Sequence[str]) -> LayerRule | None:
    """First rule of ``phase`` that matches module ``name`` (MRO class names ``type_names``), else None."""
    for rule in profile.rules_for_phase(phase):
        if rule.matches(name, type_names):
            return rule
    return None


def unmatched_rules(profile: HardwareProfile, phase: str,
                    module_records: Iterable[tuple[str, Sequence[str]]]) -> list[LayerRule]:
    """Non-optional rules of ``phase`` that match none of ``module_records`` ((name, type_names) pairs)."""
    records = [(name, tuple(types)) for name, types in module_records]
    return [r for r in profile.rules_for_phase(phase)
            if not r.optional and not any(r.matches(n, t) for n, t in records)]
