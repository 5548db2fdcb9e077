"""BENCHMARKS.md §1w: doubtful objects removed by their mean mask probability (`min_score`), on trained CV folds.

    python -m benchmarks.score_probe cv/recipe_seed3 cv/recipe_seed4 cv/recipe_seed5 > score.jsonl

Per fold: the TTA probabilities of the valid and test originals (`benchmarks.fold_cache`), the post-processing
searched on valid as `tnbc eval` does (by AJI), once without `min_score` (the previous search) and once with
it, each scored on test (means over images). One JSON line per fold, then the paired means per seed and
over all folds.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.fold_cache import METRICS, chosen_on_valid, fold_cases, means_on_test
from tnbc_pipeline.evaluation import tune

ARMS = {"without": [f for f in tune.SEARCH if f != "min_score"], "with": list(tune.SEARCH)}


def probe(fold_dir: Path) -> dict:
    """One fold: {"fold", arm: {"post", metric: mean over its test images}} for both arms."""
    channels, cases = fold_cases(fold_dir)
    row: dict = {"fold": str(fold_dir)}
    for arm, fields in ARMS.items():
        post = chosen_on_valid(cases, channels, fields)
        row[arm] = {"post": dataclasses.asdict(post), **means_on_test(cases, channels, post)}
    return row


def paired(rows: list[dict]) -> str:
    """Mean with - without, per metric, over `rows`."""
    return " ".join(f"{m} {np.mean([r['with'][m] - r['without'][m] for r in rows]):+.4f}" for m in METRICS)


if __name__ == "__main__":
    by_seed: dict[str, list[dict]] = {}
    for cv_dir in map(Path, sys.argv[1:]):
        for fold_dir in sorted(cv_dir.glob("fold[0-9]*")):
            row = probe(fold_dir)
            by_seed.setdefault(str(cv_dir), []).append(row)
            print(json.dumps(row), flush=True)
    for cv_dir, rows in by_seed.items():
        print(f"# {cv_dir} ({len(rows)} folds): {paired(rows)}")
    print(f"# all ({sum(map(len, by_seed.values()))} folds): {paired([r for rows in by_seed.values() for r in rows])}")
