"""Foundations every layer may use: typed errors, optional-dependency imports, atomic file writes."""
