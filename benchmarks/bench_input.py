"""`make bench-input`: the tf.data input pipeline against the old load-everything method and against
what the default model consumes, measured in one run; each measurement in its own process so that
its peak RSS is its own.

- pipeline: images/s of `make_dataset(train, training=True)` (batch 8, 256x256 crops, flips, rot90)
  over a fixed number of batches, at 1x and 4x data (4x = every shard listed four times);
- old method: cv2-read every train file into one numpy array, then one epoch of the same batches
  (numpy crops and flips), load time included, at 1x and 4x (every file read four times);
- model: training images/s of the default U-Net (`build_unet()`) on 256x256 batches of 8.

Goals on 2 cores: pipeline >= 10x the model's consumption; pipeline peak RSS within 10% from 1x to 4x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import child, load_split_arrays, prepare, replicate, rss_mb  # noqa: E402

BATCH, PATCH = 8, 256


def child_pipeline(records: Path, batches: int) -> dict:
    from tnbc_pipeline.data.pipeline import make_dataset

    it = iter(make_dataset(records, "train", training=True, batch_size=BATCH, patch=PATCH, seed=0))
    start = time.perf_counter()
    next(it)
    first = time.perf_counter() - start
    for _ in range(5):  # warm-up: let AUTOTUNE settle
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return {"images_per_s": batches * BATCH / (time.perf_counter() - start), "first_batch_s": first,
            "peak_rss_mb": rss_mb()}


def child_old(dataset: Path, copies: int) -> dict:
    import numpy as np

    start = time.perf_counter()
    images, masks = load_split_arrays(dataset, "train", copies)
    n = len(images)
    load = time.perf_counter() - start
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    h, w = images.shape[1:3]
    for b in range(0, n - BATCH + 1, BATCH):
        idx = np.sort(order[b : b + BATCH])
        y0, x0 = rng.integers(0, h - PATCH + 1), rng.integers(0, w - PATCH + 1)
        x = images[idx, y0 : y0 + PATCH, x0 : x0 + PATCH].astype(np.float32) / 255
        y = masks[idx, y0 : y0 + PATCH, x0 : x0 + PATCH].astype(np.float32)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        k = rng.integers(4)
        x, y = np.ascontiguousarray(np.rot90(x, k, (1, 2))), np.ascontiguousarray(np.rot90(y, k, (1, 2)))
    total = time.perf_counter() - start
    return {"images_per_s": n / total, "load_s": load, "epoch_s": total, "peak_rss_mb": rss_mb()}


def child_model(steps: int) -> dict:
    import numpy as np

    from tnbc_pipeline.model.unet import build_unet
    from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

    model = build_unet()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, PATCH, PATCH, 3), dtype=np.float32)
    y = (rng.random((BATCH, PATCH, PATCH, 1)) > 0.85).astype(np.float32)
    for _ in range(2):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return {"images_per_s": steps * BATCH / (time.perf_counter() - start), "peak_rss_mb": rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="A TNBC release (default: a synthetic 512 px one, made here).")
    parser.add_argument("--batches", type=int, default=60, help="Pipeline batches timed per measurement.")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = {"pipeline": lambda: child_pipeline(Path(rest[0]), int(rest[1])),
                  "old": lambda: child_old(Path(rest[0]), int(rest[1])),
                  "model": lambda: child_model(int(rest[0]))}[kind]()
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="tnbc-bench-input-") as tmp:
        tmp = Path(tmp)
        raw, dataset = prepare(args.raw, tmp)
        records4 = replicate(dataset / "tfrecords", 4, tmp / "tfrecords4")
        print(f"release: {raw}; train split of the default dataset; batch {BATCH}, {PATCH}x{PATCH}; "
              f"{os.cpu_count()} cores")
        pipe1 = child(__file__, "pipeline", str(dataset / "tfrecords"), str(args.batches))
        pipe4 = child(__file__, "pipeline", str(records4), str(args.batches))
        old1 = child(__file__, "old", str(dataset), "1")
        old4 = child(__file__, "old", str(dataset), "4")
        model = child(__file__, "model", "5")

    print(f"\n{'measurement':<44} {'images/s':>9} {'peak RSS MB':>12}")
    rows = [("tf.data pipeline, 1x data", pipe1), ("tf.data pipeline, 4x data", pipe4),
            (f"old method, 1x (load {old1['load_s']:.1f} s + 1 epoch)", old1),
            (f"old method, 4x (load {old4['load_s']:.1f} s + 1 epoch)", old4),
            ("default U-Net training consumption", model)]
    for name, r in rows:
        print(f"{name:<44} {r['images_per_s']:>9.1f} {r['peak_rss_mb']:>12.0f}")
    print(f"\npipeline / model consumption: {pipe1['images_per_s'] / model['images_per_s']:.1f}x (goal >= 10x)")
    print(f"pipeline / old method (1x, load included): {pipe1['images_per_s'] / old1['images_per_s']:.1f}x")
    print(f"peak RSS 4x / 1x: pipeline {pipe4['peak_rss_mb'] / pipe1['peak_rss_mb']:.2f} (goal <= 1.10), "
          f"old method {old4['peak_rss_mb'] / old1['peak_rss_mb']:.2f}")
    print(f"time to first batch: pipeline {pipe1['first_batch_s']:.1f} s, old method {old1['load_s']:.1f} s")


if __name__ == "__main__":
    main()
