"""Bundled hardware profiles (YAML data). Shipped in the wheel as ``hwprune.hardware_profiles``."""
