"""BENCHMARKS.md §1t (1): post-split fragments absorbed or kept, on trained CV folds (not a `make bench` target).

    python -m benchmarks.fragments_probe cv/recipe_seed3 cv/recipe_seed4 cv/recipe_seed5 > fragments.jsonl

Per fold: the TTA probabilities of the valid and test originals (as `tnbc eval` computes them), the
post-processing searched on valid as `tnbc eval` does, once with `absorb_fragments` off and once on, each
scored on test (means over images). One JSON line per fold.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from tnbc_pipeline.config import PostProcess
from tnbc_pipeline.evaluation import tune
from tnbc_pipeline.evaluation.metrics import image_metrics
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.inference.predictor import RunModel

METRICS = ("dice", "iou", "aji", "f1", "pq")


def probe(fold_dir: Path) -> dict:
    run, records = RunModel(fold_dir / "run", tta=True), fold_dir / "TNBC" / "tfrecords"
    cases = {s: [(run.predict(img), truth) for img, truth, *_ in tune.examples(records, s, False)]
             for s in ("valid", "test")}
    floor = tune.area_floor([t for _, t in cases["valid"]])
    row: dict = {"fold": str(fold_dir)}
    for absorb in (False, True):
        start = PostProcess(instances="interior", absorb_fragments=absorb)
        post, _ = tune.ascend(start, tune.searched(run, set()), cases["valid"], run.channels, "aji", floor)
        scores = [image_metrics(t, segment(p, run.channels, post)) for p, t in cases["test"]]
        row["absorb" if absorb else "keep"] = {"post": dataclasses.asdict(post),
                                               **{m: float(np.mean([s[m] for s in scores])) for m in METRICS}}
    return row


if __name__ == "__main__":
    for cv_dir in map(Path, sys.argv[1:]):
        for fold_dir in sorted(cv_dir.glob("fold[0-9]*")):
            print(json.dumps(probe(fold_dir)), flush=True)
