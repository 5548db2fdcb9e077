"""Focus per patient of a release (BENCHMARKS.md §1u): the variance of the Laplacian of each image's grey levels,
mean per patient, and what a Gaussian blur of sigma 0.5 / 0.75 / 1.0 px does to it on the sharpest patients.

    python -m benchmarks.focus ../shared/tnbc/TNBC_NucleiSegmentation
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

SIGMAS = (0.0, 0.5, 0.75, 1.0)


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian of a float32 grey image (H, W) rounded to integer levels, as uint8 would be."""
    return float(cv2.Laplacian(np.round(grey), cv2.CV_32F).var())


def main(root: Path) -> None:
    images: dict[str, list[np.ndarray]] = defaultdict(list)
    for path in sorted(root.glob("Slide_*/*.png")):  # the release's layout: Slide_PP/PP_K.png
        images[path.parent.name.removeprefix("Slide_")].append(
            cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY).astype(np.float32))
    print("| patient | images | " + " | ".join(f"sigma {s}" for s in SIGMAS) + " |")
    print("|---" * (len(SIGMAS) + 2) + "|")
    for patient, greys in sorted(images.items()):
        cells = [np.mean([sharpness(cv2.GaussianBlur(g, (0, 0), s) if s else g) for g in greys]) for s in SIGMAS]
        print(f"| {patient} | {len(greys)} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
