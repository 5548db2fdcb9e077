"""`make bench-train-options` (issue 16 §3): which training settings make the default `unet` fastest on
this machine, all measured in one run, each setting in its own process, against the old way (the whole
split as numpy arrays, `model.fit` on arrays) measured in the same run.

Settings: precision float32 | mixed_bfloat16 (Keras' policy; oneDNN uses the CPU's AVX-512 BF16 where it
has it), batch 8 | 16, each with TensorFlow's op determinism on as `tnbc train` runs it, and the first
setting without it. (No XLA rows: Keras 3 turns `jit_compile` off on TensorFlow under op determinism, so
"XLA on" timed the same step again.) 256x256 crops of our tf.data pipeline (stain jitter off: its
cost is in the input pipeline, not the model). Images/s inside one `fit` after two warm-up steps, peak RSS.
Which setting keeps accuracy is a CV question (BENCHMARKS §3 states the fold run beside it).
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import MODELS, child_old, timed_fit  # noqa: E402
from benchmarks.common import bench_parser, child, prepare, rss_mb  # noqa: E402

# every row with TensorFlow's op determinism on, as `tnbc train` runs (byte-identical reruns) ...
SETTINGS = [{"precision": p, "batch_size": b, "deterministic": True}
            for p, b in itertools.product(("float32", "mixed_bfloat16"), (8, 16))]
# ... and the first one without it: what determinism costs
NONDETERMINISTIC = {**SETTINGS[0], "deterministic": False}
STEPS = 12  # timed steps of batch 8 (half as many of batch 16): the same images per setting


def child_setting(records: Path, setting: dict) -> dict:
    import keras
    import tensorflow as tf

    from tnbc_pipeline.config import load_train_config
    from tnbc_pipeline.data.pipeline import make_dataset
    from tnbc_pipeline.model.train import build_model, compile_model

    setting = dict(setting)
    if setting.pop("deterministic"):
        tf.config.experimental.enable_op_determinism()
    cfg = load_train_config(None, {**MODELS["unet"][0], **setting})
    keras.mixed_precision.set_global_policy(cfg.precision)
    model = build_model(cfg)
    compile_model(model, cfg)
    ds = make_dataset(records, "train", training=True, batch_size=cfg.batch_size, patch=cfg.patch)
    return {"images_per_s": timed_fit(model, ds, STEPS * 8 // cfg.batch_size, cfg.batch_size), "peak_rss_mb": rss_mb()}


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    if args.child:
        kind, path, *rest = args.child
        out = child_setting(Path(path), json.loads(rest[0])) if kind == "setting" else child_old("unet", Path(path), 1)
        print(json.dumps(out))
        return

    with tempfile.TemporaryDirectory(prefix="tnbc-bench-options-") as tmp:
        raw, dataset = prepare(args.raw, Path(tmp))
        print(f"release: {raw}; train split of the default dataset; unet 256x256; each row its own process")
        old = child(__file__, "old", str(dataset))
        rows = [(s, child(__file__, "setting", str(dataset / "tfrecords"), json.dumps(s))) for s in SETTINGS]
        free = child(__file__, "setting", str(dataset / "tfrecords"), json.dumps(NONDETERMINISTIC))
    print(f"\nold way (numpy arrays, float32, batch 8): {old['images_per_s']:.2f} img/s, RSS {old['peak_rss_mb']:.0f} MB")
    print(f"{'precision':<15} {'batch':>5} {'img/s':>7} {'/ old':>6} {'RSS MB':>7}")
    for s, r in rows:
        print(f"{s['precision']:<15} {s['batch_size']:>5} {r['images_per_s']:>7.2f} "
              f"{r['images_per_s'] / old['images_per_s']:>5.2f}x {r['peak_rss_mb']:>7.0f}")
    print(f"float32, batch 8 without op determinism: {free['images_per_s']:.2f} img/s "
          f"({free['images_per_s'] / rows[0][1]['images_per_s']:.2f}x of with it)")
    print("goal: the default setting >= 1.2x the old way's images/s, memory flat (bench-train's 4x data row)")


if __name__ == "__main__":
    main()
