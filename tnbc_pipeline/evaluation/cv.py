"""Grouped k-fold cross-validation by patient: every patient is in exactly one fold's test set.

    OUT/fold{i}/TNBC/            that fold's dataset (split.folds = K, split.fold = i) and its tfrecords/
    OUT/fold{i}/run/             its training run, with eval_test/ (metrics on the fold's test patients)
    OUT/cv_folds.csv             one row per fold: test patients, images, every metric
    OUT/cv_summary.json          {metric: {"mean": m, "sd": s, "folds": [...]}} plus the settings
    OUT/cv_metrics.png           a bar chart of the fold metrics with their mean

Each step is the ordinary stage, so a rerun resumes fold by fold: an unchanged dataset and records are
no-ops, a finished run is not retrained, an interrupted one resumes from its last epoch, and a fold
whose evaluation exists is not evaluated again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tnbc_pipeline.config import DatasetConfig, RecordsConfig, TrainConfig, to_dict
from tnbc_pipeline.io import write_csv, write_json

log = logging.getLogger(__name__)

REPORTED = ("dice", "iou", "aji", "f1", "pq", "precision", "recall")


def run_fold(raw: Path, out: Path, fold: int, folds: int, data_cfg: DatasetConfig, train_cfg: TrainConfig,
             split_touching: bool, workers: int | None, progress: bool) -> dict[str, Any]:
    """Dataset -> records -> train -> eval for one fold; return its eval summary."""
    from tnbc_pipeline.data.dataset import build_dataset
    from tnbc_pipeline.data.records import build_records
    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.model.train import train

    folder = out / f"fold{fold}"
    cfg = dataclasses.replace(data_cfg, split=dataclasses.replace(data_cfg.split, folds=folds, fold=fold))
    build_dataset(raw, folder / "TNBC", cfg, workers=workers, progress=progress)
    build_records(folder / "TNBC", None, RecordsConfig(), progress=progress)
    records = folder / "TNBC" / "tfrecords"
    train(records, folder / "run", train_cfg, progress=progress)
    summary_path = folder / "run" / "eval_test" / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("split_touching") == split_touching:
            return summary
    return evaluate(folder / "run", records, "test", split_touching=split_touching, progress=progress)


def cross_validate(raw: Path, out: Path, folds: int, data_cfg: DatasetConfig, train_cfg: TrainConfig,
                   only: list[int] | None = None, split_touching: bool = False, workers: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every fold (or `only` those), then write the fold table, summary and chart."""
    from tnbc_pipeline.evaluation.plots import bar_chart

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fold in only if only is not None else range(folds):
        log.info("fold %d of %d", fold + 1, folds)
        s = run_fold(Path(raw), out, fold, folds, data_cfg, train_cfg, split_touching, workers, progress)
        rows.append({"fold": fold, "test_patients": " ".join(s["patients"]), "images": s["images"],
                     "threshold": s["threshold"], **{k: s["mean_over_images"][k] for k in REPORTED}})
    write_csv(out / "cv_folds.csv", rows)
    summary: dict[str, Any] = {
        k: {"mean": round(float(np.mean([r[k] for r in rows])), 5),
            "sd": round(float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0, 5),
            "folds": [r[k] for r in rows]} for k in REPORTED}
    summary["settings"] = {"folds": folds, "evaluated_folds": [r["fold"] for r in rows],
                           "split_touching": split_touching, "dataset_config": to_dict(data_cfg),
                           "train_config": to_dict(train_cfg)}
    write_json(out / "cv_summary.json", summary)
    bar_chart({k: summary[k]["folds"] for k in REPORTED}, [f"fold {r['fold']}" for r in rows], out / "cv_metrics.png")
    return summary
