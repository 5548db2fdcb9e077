"""tnbc_pipeline: an honest, reproducible TNBC nuclei-segmentation pipeline."""

__version__ = "0.2.0"
