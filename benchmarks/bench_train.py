"""`make bench-train`: training throughput and peak RSS, our tf.data pipeline against the old way
(the whole split as numpy arrays, `model.fit` on arrays), same model, same run, each measurement in its
own process.

Models: the default `unet` (256x256 crops, batch 8) and the old TNBC model (`unet_seed`: 7 levels,
5x5, base 16) at its own 640x640, batch 2. The old way feeds the same shapes: one fixed crop per image
(256) or the image reflect-padded to 640, prepared up front as float32 arrays. Data at 1x and 4x
(the train split repeated) shows how memory grows.

Goal: ours >= 1.0x the old way's images/s, with peak RSS flat as data grows.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench_parser, child, load_split_arrays, prepare, replicate, rss_mb  # noqa: E402

MODELS = {  # name -> (TrainConfig overrides, steps timed)
    "unet": ({"patch": 256, "batch_size": 8}, 16),
    "unet_seed": ({"patch": 640, "batch_size": 2, "model.name": "unet_seed", "model.levels": 7,
                   "model.kernel": 5, "model.dropout": 0.05, "model.batch_norm": False, "lr": 1e-4}, 4),
}


def _model(name: str):
    from tnbc_pipeline.config import load_train_config
    from tnbc_pipeline.model.train import build_model, compile_model

    cfg = load_train_config(None, MODELS[name][0])
    model = build_model(cfg)
    compile_model(model, cfg)
    return cfg, model


def _timer(skip: int = 2):
    """A callback timing the steps after the first `skip` (tracing, buffer fill) inside ONE fit call:
    separate fit calls re-create the iterator and sometimes re-trace, which skews short measurements."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        ends: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.ends.append(time.perf_counter())

        def rate(self, batch_size: int) -> float:
            timed = self.ends[skip - 1 :]
            return (len(timed) - 1) * batch_size / (timed[-1] - timed[0])

    return StepTimer()


def timed_fit(model, ds, steps: int, batch_size: int) -> float:
    """Images/s of `steps` training steps of `ds` inside one fit (after two untimed ones)."""
    timer = _timer()
    model.fit(ds, epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[timer])
    return timer.rate(batch_size)


def child_ours(name: str, records: Path) -> dict:
    from tnbc_pipeline.data.pipeline import make_dataset

    cfg, model = _model(name)
    ds = make_dataset(records, "train", training=True, batch_size=cfg.batch_size, patch=cfg.patch)
    return {"images_per_s": timed_fit(model, ds, MODELS[name][1], cfg.batch_size), "peak_rss_mb": rss_mb()}


def child_old(name: str, dataset: Path, copies: int) -> dict:
    import numpy as np

    cfg, model = _model(name)
    start = time.perf_counter()
    images, masks = load_split_arrays(dataset, "train", copies)
    p, (h, w) = cfg.patch, images.shape[1:3]
    if p <= h:
        y0, x0 = (h - p) // 2, (w - p) // 2
        x = images[:, y0 : y0 + p, x0 : x0 + p].astype(np.float32) / 255
        y = masks[:, y0 : y0 + p, x0 : x0 + p].astype(np.float32)
    else:
        pad = ((0, 0), ((p - h) // 2, p - h - (p - h) // 2), ((p - w) // 2, p - w - (p - w) // 2), (0, 0))
        x = np.pad(images, pad, mode="reflect").astype(np.float32) / 255
        y = np.pad(masks, pad, mode="reflect").astype(np.float32)
    del images, masks
    load = time.perf_counter() - start
    timer = _timer()
    model.fit(x, y, batch_size=cfg.batch_size, epochs=1, steps_per_epoch=MODELS[name][1] + 2, shuffle=True,
              verbose=0, callbacks=[timer])
    return {"images_per_s": timer.rate(cfg.batch_size), "load_s": load, "peak_rss_mb": rss_mb()}


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    if args.child:
        import json

        kind, name, *rest = args.child
        out = child_ours(name, Path(rest[0])) if kind == "ours" else child_old(name, Path(rest[0]), int(rest[1]))
        print(json.dumps(out))
        return

    with tempfile.TemporaryDirectory(prefix="tnbc-bench-train-") as tmp:
        tmp = Path(tmp)
        raw, dataset = prepare(args.raw, tmp)
        records4 = replicate(dataset / "tfrecords", 4, tmp / "tfrecords4")
        print(f"release: {raw}; train split of the default dataset; each row its own process")
        rows = []
        for name in MODELS:
            ours = child(__file__, "ours", name, str(dataset / "tfrecords"))
            old = child(__file__, "old", name, str(dataset), "1")
            rows.append((name, ours, old))
        ours4 = child(__file__, "ours", "unet", str(records4))
        old4 = child(__file__, "old", "unet", str(dataset), "4")

    print(f"\n{'model':<10} {'ours img/s':>10} {'old img/s':>10} {'ratio':>6} {'ours RSS MB':>12} {'old RSS MB':>11}")
    for name, ours, old in rows:
        print(f"{name:<10} {ours['images_per_s']:>10.2f} {old['images_per_s']:>10.2f} "
              f"{ours['images_per_s'] / old['images_per_s']:>5.2f}x {ours['peak_rss_mb']:>12.0f} {old['peak_rss_mb']:>11.0f}")
    unet_ours, unet_old = rows[0][1], rows[0][2]
    print(f"\nunet at 4x data: ours {ours4['images_per_s']:.2f} img/s, RSS {ours4['peak_rss_mb']:.0f} MB "
          f"({ours4['peak_rss_mb'] / unet_ours['peak_rss_mb']:.2f}x of 1x); old way RSS {old4['peak_rss_mb']:.0f} MB "
          f"({old4['peak_rss_mb'] / unet_old['peak_rss_mb']:.2f}x of 1x, load {old4['load_s']:.1f} s)")
    print("goal: ours >= 1.0x the old way's images/s; our peak RSS flat (<= 1.10x) from 1x to 4x data")


if __name__ == "__main__":
    main()
