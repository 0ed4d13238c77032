"""Profile granularities -> GroupSet: coupled, disjoint parameter groups (torch-pruning dependency graph).

The public names below are the package's face; inside hwprune, modules import from the defining module.
"""

from hwprune.groups.build import build_groups as build_groups
from hwprune.groups.groupset import PHASES as PHASES
from hwprune.groups.groupset import GroupInfo as GroupInfo
from hwprune.groups.groupset import GroupSet as GroupSet

__all__ = ["GroupInfo", "GroupSet", "PHASES", "build_groups"]
