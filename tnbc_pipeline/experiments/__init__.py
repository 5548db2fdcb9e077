"""Experiments that drive whole stages per patient fold: cross-validation and the augmentation study."""
