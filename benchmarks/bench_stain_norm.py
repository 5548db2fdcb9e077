"""What the Macenko layer (`[model] stain_norm = "macenko"`) costs on this machine.

    python -m benchmarks.bench_stain_norm --raw ../shared/tnbc/TNBC_NucleiSegmentation

The layer alone, compiled (tf.function), on a batch of 8 crops of 256² (a training step's worth) and on
2 whole 512² images: the best of 3 means over 5 calls, in ms per image. Run with the machine quiet.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_parser  # noqa: E402


def per_image_ms(fn, batch: np.ndarray) -> float:
    fn(batch)  # trace and warm up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(5):
            fn(batch)
        best = min(best, (time.perf_counter() - start) / 5)
    return 1000 * best / len(batch)


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    import cv2

    from tnbc_pipeline.model.stain_norm import MacenkoNormalize
    from tnbc_pipeline.tf_env import tf

    if args.raw is None:
        sys.exit("--raw is needed: the cost depends on real tissue (a synthetic release has flat colours)")
    paths = sorted(Path(args.raw).glob("Slide_*/*.png"))[::6][:8]  # the release's layout; 8 patients' images
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0 for p in paths]
    layer = MacenkoNormalize()
    fn = tf.function(layer, reduce_retracing=True)
    crops = np.stack([im[:256, :256] for im in images])
    print(f"8 x 256²: {per_image_ms(fn, crops):.1f} ms per crop")
    print(f"2 x 512²: {per_image_ms(fn, np.stack(images[:2])):.1f} ms per image")


if __name__ == "__main__":
    main()
