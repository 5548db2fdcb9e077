"""tnbc_pipeline: an honest, reproducible TNBC nuclei-segmentation pipeline."""

__version__ = "0.1.0"
