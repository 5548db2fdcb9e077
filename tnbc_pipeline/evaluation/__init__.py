"""Evaluation wing: metrics, tiled prediction, the eval and infer drivers, plots."""
