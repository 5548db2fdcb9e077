"""`make bench-slide`: whole-slide inference (`tnbc infer --slide`) speed and peak memory on a 1x and a 4x
larger synthetic pyramidal TIFF (2048^2 and 4096^2 px of tissue at 0.25 µm/px), each in its own process
so each peak RSS is its own. The goal: memory flat in the slide's size (one tile window at a time).
The model is the default U-Net of configs/tnbc.toml (untrained unless --run-dir: speed does not depend
on the weights), post-processing by the interior channel, no TTA."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import child, rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _write_slide(path: Path, side: int) -> None:
    import tifffile

    from tnbc_pipeline.data.synth import synth_case

    image = synth_case(np.random.default_rng(0), size=side)[0]
    opts = dict(tile=(256, 256), photometric="rgb", compression="zlib", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(image, subifds=3, resolution=(4e4, 4e4), **opts)
        for f in (2, 4, 8):
            tw.write(np.ascontiguousarray(image[::f, ::f]), subfiletype=1, resolution=(4e4 / f, 4e4 / f), **opts)


def _untrained_run(folder: Path) -> Path:
    """A run folder holding the default model, untrained, and its config (what RunModel reads)."""
    from tnbc_pipeline.config import load_train_config, to_dict
    from tnbc_pipeline.model.train import build_model
    from tnbc_pipeline.tf_env import tf  # noqa: F401

    cfg = load_train_config(ROOT / "configs" / "tnbc.toml", {})
    folder.mkdir(parents=True)
    build_model(cfg).save(folder / "model.keras")
    (folder / "config.json").write_text(json.dumps({"config": to_dict(cfg)}))
    return folder


def _child(run: str, slide: str, out: str) -> None:
    from tnbc_pipeline.inference.slide import infer_slide

    start = time.perf_counter()
    record = infer_slide(Path(run), Path(slide), Path(out), tta=False, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "mp_s": record["megapixels_per_s"],
                      "tiles": record["tiles"], "nuclei": record["nuclei"], "rss_mb": rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, help="A trained run (default: the untrained default U-Net).")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run_dir or _untrained_run(tmp / "run")
        rows = []
        for side in (2048, 4096):
            path = tmp / f"slide{side}.tif"
            _write_slide(path, side)
            r = child(__file__, str(run), str(path), str(tmp / f"out{side}"))
            rows.append((side, r))
        print("whole-slide inference (tnbc infer --slide, 1024-px tiles + 64-px context, no TTA), CPU:")
        print(f"  {'slide':<12} {'MP':>6} {'tiles':>6} {'s':>7} {'MP/s':>6} {'peak RSS MB':>12}")
        for side, r in rows:
            print(f"  {side}x{side:<7} {side * side / 1e6:6.1f} {r['tiles']:6d} {r['seconds']:7.1f} {r['mp_s']:6.2f} "
                  f"{r['rss_mb']:12.0f}")
        print(f"  4x the pixels: peak RSS x{rows[1][1]['rss_mb'] / rows[0][1]['rss_mb']:.2f} "
              f"(flat = 1.00), MP/s x{rows[1][1]['mp_s'] / rows[0][1]['mp_s']:.2f}")


if __name__ == "__main__":
    main()
