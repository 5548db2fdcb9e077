"""BENCHMARKS.md §1w's exploration: how well an object's mean mask probability tells true nuclei from false
ones, and (with --scales) test-time scales averaged with the 8-fold TTA, on trained CV folds (seed 5 there).

    python -m benchmarks.object_scores cv/recipe_seed5
    python -m benchmarks.object_scores cv/recipe_seed5 --scales 0.8,1.25 --folds 0,1

Each fold at its saved post-processing (RUN/postprocess.json), on the TTA probabilities of `benchmarks.fold_cache`.
Objects: the predicted instances; matched = IoU > 0.5 with a true nucleus. Per fold and split, one line: the
10th / 50th / 90th percentiles of the matched and unmatched objects' mean mask probability, and the AUC of
that mean and of the object area (Mann-Whitney U / (n_matched x n_unmatched)). With --scales: the mean Dice,
AJI, F1 and PQ of each split at scale 1 alone and with the scales averaged in (probabilities resized back).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import mannwhitneyu

from benchmarks.fold_cache import SPLITS, fold_cases
from tnbc_pipeline.config import PostProcess
from tnbc_pipeline.evaluation.metrics import contingency, image_metrics
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.inference.predictor import POSTPROCESS, ChosenPostProcess
from tnbc_pipeline.io import read_json

METRICS = ("dice", "aji", "f1", "pq")


def objects(probability: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, ...]:
    """(matched bool, mean probability, area) per predicted object of int (H, W) `labels` (1..n, sequential)."""
    inter, area_t, area_p = contingency(truth, labels)
    iou = inter / np.maximum(area_t[:, None] + area_p[None, :] - inter, 1)
    ids = np.arange(1, len(area_p) + 1)
    return (iou > 0.5).any(0), np.asarray(ndimage.mean(probability, labels, ids)), area_p


def saved_post(fold_dir: Path) -> PostProcess:
    """The post-processing `tnbc eval` chose for the fold's model (FOLD/run/postprocess.json)."""
    path = fold_dir / "run" / POSTPROCESS
    return ChosenPostProcess.from_json(read_json(path), str(path)).post


def auc(values: np.ndarray, matched: np.ndarray) -> float:
    return float(mannwhitneyu(values[matched], values[~matched]).statistic / (matched.sum() * (~matched).sum()))


def separation(fold_dir: Path) -> None:
    channels, cases = fold_cases(fold_dir)
    post = saved_post(fold_dir)
    for split in SPLITS:
        rows = [objects(p[..., channels.index("mask")], segment(p, channels, post), t) for p, t in cases[split]]
        matched, mean, area = (np.concatenate(c) for c in zip(*rows))
        pct = lambda x: "/".join(f"{v:.2f}" for v in np.percentile(x, [10, 50, 90]))  # noqa: E731
        print(f"{fold_dir} {split}: matched {matched.sum()} mean p {pct(mean[matched])}; unmatched {(~matched).sum()} "
              f"mean p {pct(mean[~matched])}; AUC mean p {auc(mean, matched):.3f}, area {auc(area, matched):.3f}")


def scales(fold_dir: Path, factors: list[float]) -> None:
    import cv2

    from tnbc_pipeline.evaluation import tune
    from tnbc_pipeline.inference.predictor import RunModel

    channels, cases = fold_cases(fold_dir)
    run = RunModel(fold_dir / "run", tta=True)
    post = saved_post(fold_dir)
    for split in SPLITS:
        images = [img for img, *_ in tune.examples(fold_dir / "TNBC" / "tfrecords", split, False)]
        one, multi = [], []
        for (p, truth), img in zip(cases[split], images):
            stack = [p]
            for f in factors:  # sides kept a multiple of 32, as the tiling pads to
                side = int(round(img.shape[0] * f / 32) * 32)
                resized = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
                stack.append(cv2.resize(run.predict(resized), img.shape[1::-1], interpolation=cv2.INTER_LINEAR))
            one.append(image_metrics(truth, segment(p, channels, post)))
            multi.append(image_metrics(truth, segment(np.mean(stack, 0), channels, post)))
        print(f"{fold_dir} {split}: " + " ".join(
            f"{m} {np.mean([s[m] for s in one]):.4f} -> {np.mean([s[m] for s in multi]):.4f}" for m in METRICS))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("cv_dirs", nargs="+", type=Path)
    parser.add_argument("--scales", help="comma-separated test-time scales averaged with scale 1")
    parser.add_argument("--folds", help="comma-separated fold numbers (default: all)")
    args = parser.parse_args()
    wanted = None if args.folds is None else {f"fold{i}" for i in args.folds.split(",")}
    for cv_dir in args.cv_dirs:
        for fold in sorted(cv_dir.glob("fold[0-9]*")):
            if wanted is None or fold.name in wanted:
                if args.scales:
                    scales(fold, [float(f) for f in args.scales.split(",")])
                else:
                    separation(fold)
