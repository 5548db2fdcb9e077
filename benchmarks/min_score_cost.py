"""BENCHMARKS.md §1z: where the pixels go -- what `min_score` (§1w) costs Dice and buys F1 and PQ, per trained fold.

    python -m benchmarks.min_score_cost cv/rerun_seed3

Per fold: the TTA probabilities of its test originals (`benchmarks.fold_cache`) and the post-processing `tnbc eval`
chose on valid (RUN/postprocess.json). Prints one JSON line per fold: pixel recall pooled over the test images of
the mask probability above the chosen threshold (before any object is removed) and of the final labels, and the
means over images of Dice, AJI, F1 and PQ with the chosen `min_score` and with `min_score = 0`, every other choice
kept (no new search). Then the mean difference (min_score 0 - chosen) over all folds.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.fold_cache import fold_cases
from tnbc_pipeline.evaluation.metrics import image_metrics
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.inference.predictor import POSTPROCESS, ChosenPostProcess
from tnbc_pipeline.io import read_json

METRICS = ("dice", "aji", "f1", "pq")


def pooled_recall(masks: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """Share of the truth's nucleus pixels, over all images, that the bool (H, W) `masks` cover."""
    return float(sum((m & (t > 0)).sum() for m, t in zip(masks, truths)) / sum((t > 0).sum() for t in truths))


def fold_cost(fold_dir: Path) -> dict:
    """One fold: {"fold", "min_score", "recall_threshold", "recall" {arm}, arm: {metric: mean over test images}}."""
    channels, cases = fold_cases(fold_dir)
    path = fold_dir / "run" / POSTPROCESS
    chosen = ChosenPostProcess.from_json(read_json(path), str(path)).post
    arms = {"chosen": chosen, "min_score_0": dataclasses.replace(chosen, min_score=0.0)}
    truths, mask = [truth for _, truth in cases["test"]], channels.index("mask")
    above = [p[..., mask] > chosen.threshold for p, _ in cases["test"]]
    row: dict = {"fold": str(fold_dir), "min_score": chosen.min_score, "recall": {},
                 "recall_threshold": pooled_recall(above, truths)}
    for arm, post in arms.items():
        labels = [segment(p, channels, post) for p, _ in cases["test"]]
        row["recall"][arm] = pooled_recall([lab > 0 for lab in labels], truths)
        scores = [image_metrics(truth, lab) for truth, lab in zip(truths, labels)]
        row[arm] = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
    return row


if __name__ == "__main__":
    rows = []
    for cv_dir in map(Path, sys.argv[1:]):
        for fold_dir in sorted(cv_dir.glob("fold[0-9]*")):
            rows.append(fold_cost(fold_dir))
            print(json.dumps(rows[-1]), flush=True)
    print(f"# {len(rows)} folds, min_score 0 - chosen: " + " ".join(
        f"{m} {np.mean([r['min_score_0'][m] - r['chosen'][m] for r in rows]):+.4f}" for m in METRICS))
