"""What a better probability map is worth: the mean of several trained models' probabilities, per CV fold.

    python -m benchmarks.ensemble_probe cv/rerun_seed3 cv/batch4_seed3 [cv/...]

Every CV folder must hold the same folds on the same records (the dataset is byte-identical per fold and seed).
Per fold: each model's TTA probabilities of the valid and test originals (`benchmarks.fold_cache`), and their
mean; for each model alone and for the mean, the post-processing searched on valid as `tnbc eval` searches it
(every field of the search, by AJI, from the valid truth's area floor), then scored on test (means over images).
The ensemble costs its members' training time together, so it is an upper bound on what a better map from the
same data would give, not a recipe inside one model's budget. One JSON line per fold, then the means over folds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.fold_cache import METRICS, Cases, chosen_on_valid, fold_cases, means_on_test
from tnbc_pipeline.evaluation import tune



def mean_cases(members: list[Cases]) -> Cases:
    """The members' probabilities averaged image by image; the truths must be the same images."""
    out: Cases = {}
    for split in members[0]:
        rows = list(zip(*(m[split] for m in members)))
        for row in rows:
            if not all(np.array_equal(row[0][1], r[1]) for r in row[1:]):
                raise SystemExit(f"the {split} truths differ between the CV folders: not the same records")
        out[split] = [(np.mean([p for p, _ in row], axis=0, dtype=np.float32), row[0][1]) for row in rows]
    return out


def fold_row(fold_dirs: list[Path]) -> dict:
    """One fold of every CV folder: {"fold", "members": [test scores per model, its own choice], "ensemble": the
    average's test scores at its own choice, "ensemble_at_members_post": the average's at each member's choice,
    "posts": the chosen fields per member, then the average's}."""
    loaded = [fold_cases(d) for d in fold_dirs]
    channels = loaded[0][0]
    if any(c != channels for c, _ in loaded):
        raise SystemExit(f"{fold_dirs}: the runs' output channels differ")
    posts = [chosen_on_valid(cases, channels) for _, cases in loaded]
    ensemble = mean_cases([cases for _, cases in loaded])
    post = chosen_on_valid(ensemble, channels)
    members = [means_on_test(cases, channels, p) for (_, cases), p in zip(loaded, posts)]
    return {"fold": fold_dirs[0].name, "members": members,
            "ensemble": means_on_test(ensemble, channels, post),
            # the map apart from the choice: the ensemble under each member's own post-processing
            "ensemble_at_members_post": [means_on_test(ensemble, channels, p) for p in posts],
            "posts": [{f: getattr(p, f) for f in tune.SEARCH} for p in [*posts, post]]}


if __name__ == "__main__":
    cv_dirs = [Path(a) for a in sys.argv[1:]]
    folds = sorted(p.name for p in cv_dirs[0].glob("fold[0-9]*"))
    rows = []
    for fold in folds:
        rows.append(fold_row([d / fold for d in cv_dirs]))
        print(json.dumps(rows[-1]), flush=True)
    for i, d in enumerate(cv_dirs):
        print(f"# {d}: " + " ".join(f"{m} {np.mean([r['members'][i][m] for r in rows]):.4f}" for m in METRICS))
    print(f"# ensemble of {len(cv_dirs)}: " + " ".join(
        f"{m} {np.mean([r['ensemble'][m] for r in rows]):.4f}" for m in METRICS))
    print("# ensemble at each member's post-processing - that member: " + " ".join(
        f"{m} {np.mean([a[m] - s[m] for r in rows for a, s in zip(r['ensemble_at_members_post'], r['members'])]):+.4f}"
        for m in METRICS))
    print("# ensemble - members' mean: " + " ".join(
        f"{m} {np.mean([r['ensemble'][m] - np.mean([s[m] for s in r['members']]) for r in rows]):+.4f}"
        for m in METRICS))
