"""Composed steps: hwprune run, latency budgets, measured profile selection, deployment bundles."""
