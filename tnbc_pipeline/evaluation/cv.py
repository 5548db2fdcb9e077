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


def run_fold(raw: Path, data_dir: Path, run_dir: Path, fold: int, folds: int, data_cfg: DatasetConfig,
             train_cfg: TrainConfig, split_touching: bool, workers: int | None, progress: bool) -> dict[str, Any]:
    """Dataset (in `data_dir`) -> records -> train (in `run_dir`) -> eval for one fold; return its eval
    summary with the dataset build's seconds and rendered item count added under "dataset"."""
    from tnbc_pipeline.data.dataset import build_dataset
    from tnbc_pipeline.data.records import build_records
    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.model.train import train

    cfg = dataclasses.replace(data_cfg, split=dataclasses.replace(data_cfg.split, folds=folds, fold=fold))
    built = build_dataset(raw, data_dir, cfg, workers=workers, progress=progress)
    build_records(data_dir, None, RecordsConfig(), progress=progress)
    records = data_dir / "tfrecords"
    train(records, run_dir, train_cfg, progress=progress)
    summary_path = run_dir / "eval_test" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("split_touching") != split_touching:
        summary = evaluate(run_dir, records, "test", split_touching=split_touching, progress=progress)
    return {**summary, "dataset": {"seconds": round(built.seconds, 2), "changed": built.changed,
                                   "rendered": sum(r.get("rendered", 0) for r in built.rows.values()),
                                   "items": sum(r.get("items", 0) for r in built.rows.values())}}


def fold_row(fold: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a fold's eval summary: test patients, images, threshold and the reported metrics."""
    return {"fold": fold, "test_patients": " ".join(summary["patients"]), "images": summary["images"],
            "threshold": summary["threshold"], "instances": summary.get("instances", ""),
            **{k: summary["mean_over_images"][k] for k in REPORTED}}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{metric: {"mean", "sd" (ddof 1; 0 for one fold), "folds"}} over fold rows."""
    return {k: {"mean": round(float(np.mean([r[k] for r in rows])), 5),
                "sd": round(float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0, 5),
                "folds": [r[k] for r in rows]} for k in REPORTED}


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
        folder = out / f"fold{fold}"
        s = run_fold(Path(raw), folder / "TNBC", folder / "run", fold, folds, data_cfg, train_cfg, split_touching,
                     workers, progress)
        rows.append(fold_row(fold, s))
    write_csv(out / "cv_folds.csv", rows)
    summary: dict[str, Any] = summarise(rows)
    summary["settings"] = {"folds": folds, "evaluated_folds": [r["fold"] for r in rows],
                           "split_touching": split_touching, "dataset_config": to_dict(data_cfg),
                           "train_config": to_dict(train_cfg)}
    write_json(out / "cv_summary.json", summary)
    bar_chart({k: summary[k]["folds"] for k in REPORTED}, [f"fold {r['fold']}" for r in rows], out / "cv_metrics.png")
    return summary
