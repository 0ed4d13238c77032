"""The run report: assembled from a run directory, rendered as JSON/Markdown, plots."""
