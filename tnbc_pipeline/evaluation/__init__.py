"""Evaluation wing, scoring only: metrics of truth vs predicted nuclei, choosing the post-processing on valid, the eval driver and its tables."""
