"""`make bench-infer`: inference speed of the default U-Net on a 2048x2048 image, whole-image against
tiled (Gaussian-blended windows), and the time of the metrics of one 512x512 image against a naive
per-nucleus implementation (benchmarks/reference_metrics.py), measured in one run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import rss_mb  # noqa: E402
from benchmarks.reference_metrics import naive_instance_metrics  # noqa: E402


def _time(fn, repeat: int = 1) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, help="A TNBC release: its first mask is the metric test case.")
    args = parser.parse_args()
    from scipy import ndimage

    from tnbc_pipeline.data.synth import synth_case
    from tnbc_pipeline.evaluation.metrics import image_metrics, instance_metrics
    from tnbc_pipeline.inference.postprocess import label_instances, split_by_interior, split_touching
    from tnbc_pipeline.inference.tiling import predict_image
    from tnbc_pipeline.model.unet import build_unet
    from tnbc_pipeline.tf_env import tf  # noqa: F401

    model = build_unet()
    predict = lambda b: np.asarray(model.predict_on_batch(b))  # noqa: E731
    image = (synth_case(np.random.default_rng(0), size=2048)[0] / 255.0).astype(np.float32)
    mp = image.shape[0] * image.shape[1] / 1e6
    print(f"inference, default U-Net, one {image.shape[1]}x{image.shape[0]} image (CPU):")
    for label, kw in [("whole image", {}), ("tiles 256, overlap 0.5", {"tile": 256, "overlap": 0.5}),
                      ("tiles 512, overlap 0.25", {"tile": 512, "overlap": 0.25}),
                      ("tiles 512, overlap 0.25, 8x TTA", {"tile": 512, "overlap": 0.25, "tta": True})]:
        seconds = _time(lambda: predict_image(predict, image, **kw))
        print(f"  {label:<34} {seconds:7.2f} s  {mp / seconds:6.2f} MP/s  (peak RSS so far {rss_mb():.0f} MB)")

    if args.raw:
        from tnbc_pipeline.data.raw import Release

        rel = Release(args.raw)
        truth = rel.load(rel.cases[0])[1] > 0
    else:
        truth = synth_case(np.random.default_rng(1), size=512)[1] > 0
    pred = ndimage.binary_dilation(truth)  # a plausible prediction: touching nuclei merge
    t, p = label_instances(truth), label_instances(pred)
    ours = _time(lambda: instance_metrics(t, p), repeat=5)
    everything = _time(lambda: image_metrics(label_instances(truth), label_instances(pred)), repeat=5)
    naive = _time(lambda: naive_instance_metrics(t, p))
    assert abs(naive_instance_metrics(t, p)["aji"] - instance_metrics(t, p)["aji"]) < 1e-9
    print(f"\nmetrics of one 512x512 image ({t.max()} true, {p.max()} predicted nuclei):")
    print(f"  AJI + F1 + PQ, contingency table   {ours * 1e3:8.1f} ms")
    print(f"  all metrics incl. labelling        {everything * 1e3:8.1f} ms")
    print(f"  naive per-nucleus reference        {naive * 1e3:8.1f} ms   ({naive / ours:.0f}x slower)")
    # Separating touching predicted nuclei: from the interior channel (here the truth eroded 2 px, blurred,
    # as a stand-in for the model's core probability) vs the distance-transform watershed.
    interior = ndimage.gaussian_filter(ndimage.binary_erosion(truth, np.ones((5, 5))).astype(np.float32), 1)
    by_interior = _time(lambda: split_by_interior(pred, interior), repeat=5)
    by_distance = _time(lambda: split_touching(pred), repeat=5)
    print(f"  split touching: interior cores     {by_interior * 1e3:8.1f} ms   "
          f"({split_by_interior(pred, interior).max()} nuclei)")
    print(f"  split touching: distance watershed {by_distance * 1e3:8.1f} ms   ({split_touching(pred).max()} nuclei)")


if __name__ == "__main__":
    main()
