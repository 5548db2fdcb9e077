"""Post-processing changes probed on trained CV folds: the search on valid without and with the change, each
choice scored on test.

    python -m benchmarks.score_probe cv/recipe_seed3 cv/recipe_seed4 cv/recipe_seed5 > score.jsonl
    python -m benchmarks.score_probe --max-hole 100 cv/rerun_seed3 > holes.jsonl

Default (BENCHMARKS.md §1w): doubtful objects removed by their mean mask probability (`min_score`), the search
without that field (the previous search) and with it. `--max-hole N` (§1y): the whole search from a start
without hole filling and from one that fills holes of at most N px. Per fold: the TTA probabilities of the
valid and test originals (`benchmarks.fold_cache`), the search on valid as `tnbc eval` runs it (by AJI), each
choice scored on test (means over images). One JSON line per fold, then the paired means per seed and over all
folds; the hole arm's line also counts the hole pixels filled on test at its choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from benchmarks.fold_cache import fold_cases
from tnbc_pipeline.config import DEFAULT_TUNE_BY, PostProcess
from tnbc_pipeline.evaluation import tune
from tnbc_pipeline.evaluation.metrics import image_metrics
from tnbc_pipeline.inference.postprocess import fill_holes, segment

METRICS = ("dice", "iou", "aji", "f1", "pq")
Arms = dict[str, tuple[PostProcess, list[str]]]  # arm -> (the search's start, the fields it searches)
START = PostProcess(instances="interior", max_hole=0)  # the post-processing before §1w and §1y


def min_score_arms() -> Arms:
    return {"without": (START, [f for f in tune.SEARCH if f != "min_score"]), "with": (START, list(tune.SEARCH))}


def hole_arms(max_hole: int) -> Arms:
    return {"without": (START, list(tune.SEARCH)),
            "with": (dataclasses.replace(START, max_hole=max_hole), list(tune.SEARCH))}


def probe(fold_dir: Path, arms: Arms) -> dict:
    """One fold: {"fold", arm: {"post", metric: mean over its test images}} for both arms."""
    channels, cases = fold_cases(fold_dir)
    floor = tune.area_floor([truth for _, truth in cases["valid"]])
    row: dict = {"fold": str(fold_dir)}
    for arm, (start, fields) in arms.items():
        post, _ = tune.ascend(start, fields, cases["valid"], channels, DEFAULT_TUNE_BY, floor)
        scores = [image_metrics(truth, segment(p, channels, post)) for p, truth in cases["test"]]
        row[arm] = {"post": dataclasses.asdict(post), **{m: float(np.mean([s[m] for s in scores])) for m in METRICS}}
        if post.max_hole:
            masks = [p[..., channels.index("mask")] > post.threshold for p, _ in cases["test"]]
            row[arm]["filled_px"] = int(sum((fill_holes(m, post.max_hole) & ~m).sum() for m in masks))
    return row


def paired(rows: list[dict]) -> str:
    """Mean with - without, per metric, over `rows`."""
    return " ".join(f"{m} {np.mean([r['with'][m] - r['without'][m] for r in rows]):+.4f}" for m in METRICS)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("cv_dirs", nargs="+", type=Path)
    parser.add_argument("--max-hole", type=int, help="probe hole filling up to this many px instead of min_score")
    args = parser.parse_args()
    arms = min_score_arms() if args.max_hole is None else hole_arms(args.max_hole)
    by_seed: dict[str, list[dict]] = {}
    for cv_dir in args.cv_dirs:
        for fold_dir in sorted(cv_dir.glob("fold[0-9]*")):
            row = probe(fold_dir, arms)
            by_seed.setdefault(str(cv_dir), []).append(row)
            print(json.dumps(row), flush=True)
    for cv_dir, rows in by_seed.items():
        print(f"# {cv_dir} ({len(rows)} folds): {paired(rows)}")
    print(f"# all ({sum(map(len, by_seed.values()))} folds): {paired([r for rows in by_seed.values() for r in rows])}")
