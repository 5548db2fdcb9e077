"""Data wing: the raw release, synthetic releases, splits, augmentation and the dataset stage."""
