"""BENCHMARKS.md §1y: the release's truth masks -- how many pixels their holes hold, and their nucleus areas.

    python -m benchmarks.truth_masks ../shared/tnbc/TNBC_NucleiSegmentation

Prints the images read, the pixels `scipy.ndimage.binary_fill_holes` adds over all masks (and in how many
4-connected holes) against their nucleus pixels, and the 1st / 5th / 50th / 99th percentile nucleus area
(8-connected components, as the metrics count truth nuclei).
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import ndimage

from tnbc_pipeline.data.layouts import open_release
from tnbc_pipeline.inference.postprocess import label_instances

if __name__ == "__main__":
    release = open_release(sys.argv[1])
    hole_px = holes = nucleus_px = 0
    areas: list[np.ndarray] = []
    for case in release.cases:
        mask = release.load(case)[1] > 0
        filled = ndimage.binary_fill_holes(mask) & ~mask
        hole_px, holes = hole_px + int(filled.sum()), holes + ndimage.label(filled)[1]
        nucleus_px += int(mask.sum())
        areas.append(np.bincount(label_instances(mask).ravel())[1:])
    pct = np.percentile(np.concatenate(areas), [1, 5, 50, 99])
    print(f"{len(release.cases)} images: holes fill {hole_px} px in {holes} holes against {nucleus_px} nucleus px; "
          f"nucleus area 1st / 5th / 50th / 99th percentile {' / '.join(f'{v:.0f}' for v in pct)} px")
