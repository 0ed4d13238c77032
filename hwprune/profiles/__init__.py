"""Hardware profiles: frozen schema, parsing/validation, bundled files, machine detection and ranking.

Pure Python + PyYAML (no torch). The public names below are the package's face; inside hwprune,
modules import from the defining module (``schema``, ``parse``, ``io``, ``machine``).
"""

from hwprune.profiles.io import bundled_profiles_dir as bundled_profiles_dir
from hwprune.profiles.io import list_profiles as list_profiles
from hwprune.profiles.io import load_profile as load_profile
from hwprune.profiles.matching import match_rule as match_rule
from hwprune.profiles.matching import rule_matches as rule_matches
from hwprune.profiles.matching import unmatched_rules as unmatched_rules
from hwprune.profiles.parse import granularity_to_dict as granularity_to_dict
from hwprune.profiles.parse import profile_from_dict as profile_from_dict
from hwprune.profiles.parse import profile_to_dict as profile_to_dict
from hwprune.profiles.parse import profile_to_yaml as profile_to_yaml
from hwprune.profiles.schema import GRANULARITY_TYPES as GRANULARITY_TYPES
from hwprune.profiles.schema import PHASES as PHASES
from hwprune.profiles.schema import SCHEMA_VERSION as SCHEMA_VERSION
from hwprune.profiles.schema import BenchSpec as BenchSpec
from hwprune.profiles.schema import ChannelBlockGranularity as ChannelBlockGranularity
from hwprune.profiles.schema import ChannelGranularity as ChannelGranularity
from hwprune.profiles.schema import DeviceSpec as DeviceSpec
from hwprune.profiles.schema import Granularity as Granularity
from hwprune.profiles.schema import HardwareProfile as HardwareProfile
from hwprune.profiles.schema import HeadGranularity as HeadGranularity
from hwprune.profiles.schema import KernelShapeGranularity as KernelShapeGranularity
from hwprune.profiles.schema import LayerGranularity as LayerGranularity
from hwprune.profiles.schema import LayerRule as LayerRule
from hwprune.profiles.schema import MLPBlockGranularity as MLPBlockGranularity
from hwprune.profiles.schema import NMGranularity as NMGranularity
from hwprune.profiles.schema import NoGranularity as NoGranularity
from hwprune.profiles.schema import UnstructuredGranularity as UnstructuredGranularity

__all__ = [
    "SCHEMA_VERSION", "PHASES", "UnstructuredGranularity", "ChannelGranularity", "ChannelBlockGranularity",
    "KernelShapeGranularity", "LayerGranularity", "NMGranularity", "NoGranularity", "HeadGranularity",
    "MLPBlockGranularity", "Granularity",
    "GRANULARITY_TYPES", "LayerRule", "DeviceSpec", "BenchSpec", "HardwareProfile", "match_rule", "rule_matches",
    "unmatched_rules", "granularity_to_dict", "profile_from_dict", "profile_to_dict", "profile_to_yaml",
    "load_profile", "list_profiles", "bundled_profiles_dir",
]
