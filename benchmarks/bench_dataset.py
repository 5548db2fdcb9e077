"""`make bench-dataset`: dataset build speed against the old generator's method, measured in one run.

Prints pairs/s of the old method (serial, on a subset of sources: it is slow) and of `tnbc dataset`
at 1 worker and at all workers (full default build of all 50 images), their ratios, and the time
to regenerate after changing one sigma (1 of 22 variants) and the alpha (2 of 22) as a share of a
full build. Uses the synthetic 512x512 release unless --raw points at a real one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import dataset_profile, reference_old  # noqa: E402
from tnbc_pipeline.config import AugmentConfig, DatasetConfig  # noqa: E402
from tnbc_pipeline.data.dataset import build_dataset  # noqa: E402
from tnbc_pipeline.data.raw import Release  # noqa: E402
from tnbc_pipeline.data.synth import write_release  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="A TNBC release (default: a synthetic 512 px one, made here).")
    parser.add_argument("--old-sources", type=int, default=4, help="Sources the old method renders (22 pairs each).")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tnbc-bench-") as tmp:
        tmp = Path(tmp)
        raw = args.raw or write_release(tmp / "raw", seed=0, size=512)
        release = Release(raw)
        print(f"release: {raw} ({len(release.cases)} images); machine: {cores} cores")

        # Old method: the generator's per-image work, serial, JPEG out (it read files from a folder).
        folder = tmp / "old-src"
        folder.mkdir()
        for case in release.cases[: args.old_sources]:
            (folder / f"{case.key}-img.png").write_bytes(release.read_bytes(case.image))
            (folder / f"{case.key}-mask.png").write_bytes(release.read_bytes(case.mask))
        out_old = tmp / "old"
        (out_old / "images").mkdir(parents=True)
        (out_old / "masks").mkdir(parents=True)
        start = time.perf_counter()
        pairs_old = sum(reference_old.render_pair(folder / f"{c.key}-img.png", folder / f"{c.key}-mask.png", out_old, i)
                        for i, c in enumerate(release.cases[: args.old_sources]))
        old_rate = pairs_old / (time.perf_counter() - start)

        rows = [("old method (scipy elastic, serial)", pairs_old, pairs_old / old_rate, old_rate)]
        cfg = DatasetConfig()
        full = {}
        for workers in sorted({1, cores}):
            out = tmp / f"ours-{workers}" / "TNBC"
            summary = build_dataset(raw, out, cfg, workers=workers, progress=False)
            pairs = sum(r["rendered"] for r in summary.rows.values())
            full[workers] = summary.seconds
            rows.append((f"tnbc dataset, {workers} worker(s)", pairs, summary.seconds, pairs / summary.seconds))
            if workers != cores:
                shutil.rmtree(out.parent)

        before = tmp / "adaptive" / "TNBC"  # the previous default encoder, side by side in this run
        summary = build_dataset(raw, before, dataclasses.replace(cfg, png_filter="adaptive"), workers=cores,
                                progress=False)
        pairs = sum(r["rendered"] for r in summary.rows.values())
        rows.append(("  same, png_filter adaptive (before)", pairs, summary.seconds, pairs / summary.seconds))
        shutil.rmtree(before.parent)

        out = tmp / f"ours-{cores}" / "TNBC"
        regen = []
        for label, augment in [("change one sigma (1 of 22 variants)", AugmentConfig(sigma=(8.0, 12.0))),
                               ("change alpha (2 of 22 variants)", AugmentConfig(alpha=(90.0,), sigma=(8.0, 12.0)))]:
            summary = build_dataset(raw, out, dataclasses.replace(cfg, augment=augment), workers=cores, progress=False)
            regen.append((label, sum(r["rendered"] for r in summary.rows.values()), summary.seconds))

        print(f"\n{'method':<40} {'pairs':>6} {'seconds':>8} {'pairs/s':>8} {'vs old':>7}")
        for name, pairs, seconds, rate in rows:
            print(f"{name:<40} {pairs:>6} {seconds:>8.2f} {rate:>8.1f} {rate / old_rate:>6.1f}x")
        print(f"\n{'regeneration (all workers)':<40} {'pairs':>6} {'seconds':>8} {'of full':>8}")
        for label, pairs, seconds in regen:
            print(f"{label:<40} {pairs:>6} {seconds:>8.2f} {seconds / full[cores]:>8.1%}")
        print(f"\ngoals: >= 10x the old method ({rows[-2][3] / old_rate:.1f}x), full build <= 20 s "
              f"({full[cores]:.1f} s), regeneration of 2 of 22 variants <= 15% ({regen[-1][2] / full[cores]:.1%})")
        dataset_profile.report(raw)  # while the synthetic release still exists


if __name__ == "__main__":
    main()
