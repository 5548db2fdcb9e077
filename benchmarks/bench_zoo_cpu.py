"""`make bench-zoo` (issue 14): every model of the zoo trained on this machine's CPU the way `tnbc train`
runs it, each in its own process, one after another in one run: images/s inside one `fit` and the process's
peak RSS.

Each model at its registered defaults with the project's heads (mask + interior), the recipe of
`configs/zoo_cpu.toml` where it bears on speed (256x256 crops of our tf.data pipeline, batch 8, float32 as
the zoo's CV ran, op determinism on), 12 timed steps after 2 untimed. The zoo's CV folds (`make zoo`) run
beside other work, so their done.json rates are not comparable; these are.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_options import child_setting  # noqa: E402
from benchmarks.common import bench_parser, child, prepare  # noqa: E402


def main() -> None:
    from tnbc_pipeline.model.registry import MODELS

    parser = bench_parser(__doc__)
    parser.add_argument("--precision", default="float32", help="Keras policy [default: float32, as the zoo's CV].")
    parser.add_argument("--models", nargs="*", help="these models only [default: the whole registry]")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_setting(Path(args.child[0]), json.loads(args.child[1]))))
        return

    names = args.models or list(MODELS)
    with tempfile.TemporaryDirectory(prefix="tnbc-bench-zoo-") as tmp:
        raw, dataset = prepare(args.raw, Path(tmp))
        print(f"release: {raw}; train split of the default dataset; 256x256, batch 8, {args.precision}; "
              "each row its own process")
        rows = []
        for name in names:
            setting = {"model.name": name, "precision": args.precision, "jit": False, "batch_size": 8,
                       "deterministic": True}
            rows.append((name, child(__file__, str(dataset / "tfrecords"), json.dumps(setting))))
    print(f"\n{'model':<16} {'img/s':>7} {'vs unet':>8} {'RSS MB':>7}")
    base = dict(rows).get("unet", rows[0][1])["images_per_s"]
    for name, r in rows:
        print(f"{name:<16} {r['images_per_s']:>7.2f} {r['images_per_s'] / base:>7.2f}x {r['peak_rss_mb']:>7.0f}")


if __name__ == "__main__":
    main()
