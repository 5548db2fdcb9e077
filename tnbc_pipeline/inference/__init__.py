"""Turning a trained run into nuclei: loading, tiling, post-processing, the infer stage."""
