"""Dependency-graph surgery (remove zero groups, SurgeryPlan, equivalence) and pickle-free model I/O."""
