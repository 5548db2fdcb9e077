"""Grouped k-fold cross-validation by patient: every patient is in exactly one fold's test set.

    OUT/fold{i}/TNBC/            that fold's dataset (split.folds = K, split.fold = i) and its tfrecords/
    OUT/fold{i}/run/             its training run, with eval_test/ (metrics on the fold's test patients)
    OUT/fold{i}/identity.json    what the fold's result depends on: every stage's settings + the release
    OUT/fold{i}/result.json      the fold's eval summary, its dataset build, the run's and eval's identities
    OUT/cv_folds.csv             one row per fold: test patients, images, every metric
    OUT/cv_summary.json          {metric: {"mean": m, "sd": s, "folds": [...]}}, the settings, and per fold
                                 the identities of the fold, its run and its eval; it covers the folds run
                                 now and every other fold an earlier call scored with the same identity
                                 (`summarised_folds`), so `--fold 0` then `--fold 1` summarise both
    OUT/cv_metrics.png           a bar chart of the fold metrics with their mean
    OUT/fold{i}/peer_NAME/       with `peers`: each peer trained and scored on the same fold (experiments/peers.py)
    OUT/peers_folds.csv          with `peers`: one row per fold and model (ours first), every metric

A fold whose identity matches is reused as it is (one info line). Otherwise each step is the ordinary
stage, so a rerun resumes: an unchanged dataset and records are no-ops, an interrupted run resumes from
its last epoch, an eval of the same identity is reused -- and a run made with other settings is refused
in one line (`force`: train it again), so new settings never report old numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tnbc_pipeline import identity
from tnbc_pipeline.config import (DEFAULT_TUNE_BY, DEFAULT_TUNE_ON, DatasetConfig, RecordsConfig, TrainConfig,
                                  identity_dict, to_dict)
from tnbc_pipeline.data.layouts import open_release
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import read_json, write_csv, write_json

log = logging.getLogger(__name__)

REPORTED = ("dice", "iou", "aji", "f1", "pq", "precision", "recall")


@dataclass(frozen=True)
class Scoring:
    """How each fold's model is scored on its test patients."""

    overrides: dict[str, Any] = field(default_factory=dict)  # PostProcess fields fixed by the user; the
    #                                                           threshold, unless given, is chosen on valid
    tta: bool = False  # average the 8 flips/rotations
    tune_by: str = DEFAULT_TUNE_BY  # config.TuneBy: what the post-processing chosen on valid maximises
    tune_on: str = DEFAULT_TUNE_ON  # config.TuneOn: the originals it is chosen on

    def to_json(self) -> dict[str, Any]:
        from tnbc_pipeline.evaluation.tune import AREA_FLOOR, BEYOND_RULE, SEARCH

        # the grids the valid search walks, how it extends them and the least area's floor: a change changes
        # every result chosen on it
        return {"overrides": self.overrides, "tta": self.tta, "tune_by": self.tune_by, "tune_on": self.tune_on,
                "search": {f: list(grid) for f, grid in SEARCH.items()}, "beyond": BEYOND_RULE,
                "area_floor": AREA_FLOOR}


def mark(out: Path, stage: str, settings: dict[str, Any]) -> None:
    """Claim an experiment's output folder (new, empty, or made by `stage`) and record what it runs."""
    identity.claim(out, stage)
    out.mkdir(parents=True, exist_ok=True)
    identity.write(out, identity.Identity(stage, settings))


def fold_config(data_cfg: DatasetConfig, fold: int, folds: int) -> DatasetConfig:
    return dataclasses.replace(data_cfg, split=dataclasses.replace(data_cfg.split, folds=folds, fold=fold))


def fold_identity(raw: Path, data_cfg: DatasetConfig, train_cfg: TrainConfig, scoring: Scoring) -> identity.Identity:
    """Everything a fold's result depends on, computable before any stage runs: the dataset identity
    (settings + release bytes), the records, train and scoring settings, train's `identity_extras`."""
    from tnbc_pipeline.data.dataset import expected_identity
    from tnbc_pipeline.model.train import identity_extras

    return identity.Identity("fold", {"records": to_dict(RecordsConfig()), "train": identity_dict(train_cfg),
                                      "scoring": scoring.to_json(), **identity_extras(train_cfg)},
                             {"dataset": expected_identity(raw, data_cfg).digest})


def run_fold(raw: Path, data_dir: Path, run_dir: Path, data_cfg: DatasetConfig, train_cfg: TrainConfig,
             scoring: Scoring, workers: int | None, progress: bool, force: bool) -> dict[str, Any]:
    """Dataset (in `data_dir`) -> records -> train (in `run_dir`) -> eval on test for one fold; return its
    eval summary with the dataset build's seconds and rendered item count under "dataset"."""
    from tnbc_pipeline.data.dataset import build_dataset
    from tnbc_pipeline.data.records import build_records
    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.model.train import train

    built = build_dataset(raw, data_dir, data_cfg, workers=workers, progress=progress)
    build_records(data_dir, None, RecordsConfig(), progress=progress)
    records = data_dir / "tfrecords"
    train(records, run_dir, train_cfg, progress=progress, replace_stale=force)
    summary = evaluate(run_dir, records, "test", scoring.overrides, scoring.tta, progress=progress,
                       tune_by=scoring.tune_by, tune_on=scoring.tune_on)
    return {**summary, "dataset": {"seconds": round(built.seconds, 2), "changed": built.changed,
                                   "rendered": sum(r.get("rendered", 0) for r in built.rows.values()),
                                   "items": sum(r.get("items", 0) for r in built.rows.values())}}


def scored_fold(folder: Path, raw: Path, data_dir: Path, data_cfg: DatasetConfig, train_cfg: TrainConfig,
                scoring: Scoring, workers: int | None, progress: bool, force: bool) -> dict[str, Any]:
    """A fold's result (`folder`/result.json), reused when `folder` records the same identity, else made
    by `run_fold` (run in `folder`/run) and recorded with its identity."""
    wanted = fold_identity(raw, data_cfg, train_cfg, scoring)
    result_path = folder / "result.json"
    if identity.matches(folder, wanted) and result_path.is_file():
        log.info("%s: already scored with these settings (identity %s); reusing it", folder, wanted.digest[:12])
        return read_json(result_path)
    try:
        previous = read_json(result_path) if result_path.is_file() else {}
    except TnbcError:
        previous = {}  # unreadable: made again below
    result = run_fold(raw, data_dir, folder / "run", data_cfg, train_cfg, scoring, workers, progress, force)
    if not result["dataset"]["changed"] and "dataset" in previous:
        result["dataset"] = previous["dataset"]  # keep the timing of the build that really made the data
    result["fold_identity"] = wanted.digest
    write_json(result_path, result)
    identity.write(folder, wanted)
    return result


def fold_row(fold: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a fold's eval summary: test patients, images, post-processing and the reported metrics."""
    return {"fold": fold, "test_patients": " ".join(summary["patients"]), "images": summary["images"],
            "threshold": summary["threshold"], "instances": summary["instances"], "min_area": summary["min_area"],
            **{k: summary["mean_over_images"][k] for k in REPORTED}}


def fold_identities(fold: int, result: dict[str, Any]) -> dict[str, Any]:
    """What a summary records of each fold: the identities of the fold, its run and its eval."""
    return {"fold": fold, "fold_identity": result["fold_identity"], "run_identity": result["run_identity"],
            "model_sha256": result["model_sha256"], "eval_identity": result["identity"]}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{metric: {"mean", "sd" (ddof 1; 0 for one fold), "folds"}} over fold rows."""
    return {k: {"mean": round(float(np.mean([r[k] for r in rows])), 5),
                "sd": round(float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0, 5),
                "folds": [r[k] for r in rows]} for k in REPORTED}


def earlier_folds(raw: Path, out: Path, folds: int, data_cfg: DatasetConfig, train_cfg: TrainConfig,
                  scoring: Scoring, skip: list[int] | None) -> list[tuple[int, dict[str, Any]]]:
    """The folds not run by this call (`skip`: those run; None: all of them) that an earlier call scored
    with the same identity, so the summary covers every fold of these settings (`--fold 0` then `--fold 1`
    summarise both); a fold scored with other settings is left out, with a warning."""
    if skip is None:
        return []
    found = []
    for fold in sorted(set(range(folds)) - set(skip)):
        folder = out / f"fold{fold}"
        if not (folder / "result.json").is_file():
            continue
        if identity.matches(folder, fold_identity(raw, fold_config(data_cfg, fold, folds), train_cfg, scoring)):
            log.info("fold %d: scored earlier with these settings; in the summary", fold)
            found.append((fold, read_json(folder / "result.json")))
        else:
            log.warning("%s: scored with other settings; not in the summary (run it again with --fold %d)",
                        folder, fold)
    return found


def cross_validate(raw: Path, out: Path, folds: int, data_cfg: DatasetConfig, train_cfg: TrainConfig,
                   only: list[int] | None = None, scoring: Scoring = Scoring(), workers: int | None = None,
                   progress: bool = True, force: bool = False, peers: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run (or resume) every fold (or `only` those), then write the fold table, summary and chart.
    `force`: retrain a fold whose run was made with other settings instead of refusing it. `peers`
    (config.PeerName): also train and score these models on each fold, summarised under "peers"."""
    from tnbc_pipeline.experiments.peers import peer_fold
    from tnbc_pipeline.report import bar_chart

    out = Path(out)
    settings = {"folds": folds, "evaluated_folds": list(only if only is not None else range(folds)), "peers": list(peers),
                "scoring": scoring.to_json(),
                "dataset_config": to_dict(data_cfg), "train_config": to_dict(train_cfg)}
    open_release(raw, data_cfg.mask_threshold, data_cfg.layout)  # a bad release is refused before anything is written
    mark(out, "cv", settings)
    rows, made, peer_rows = [], [], []
    for fold in only if only is not None else range(folds):
        log.info("fold %d of %d", fold + 1, folds)
        folder = out / f"fold{fold}"
        result = scored_fold(folder, Path(raw), folder / "TNBC", fold_config(data_cfg, fold, folds), train_cfg,
                             scoring, workers, progress, force)
        rows.append(fold_row(fold, result))
        made.append(fold_identities(fold, result))
        peer_rows.append({"model": "ours", **{k: rows[-1][k] for k in ("fold", "test_patients", "images", *REPORTED)}})
        for name in peers:
            peer = peer_fold(name, folder / "TNBC" / "tfrecords", folder, train_cfg, progress, force)
            peer_rows.append({"model": name, "fold": fold, "test_patients": " ".join(peer["patients"]),
                              "images": peer["images"], **{k: peer["mean_over_images"][k] for k in REPORTED}})
    for fold, result in earlier_folds(Path(raw), out, folds, data_cfg, train_cfg, scoring, skip=only):
        rows.append(fold_row(fold, result))
        made.append(fold_identities(fold, result))
    order = np.argsort([r["fold"] for r in rows], kind="stable")
    rows, made = [rows[i] for i in order], [made[i] for i in order]
    write_csv(out / "cv_folds.csv", rows)
    summary: dict[str, Any] = summarise(rows)
    summary["settings"] = settings
    summary["summarised_folds"] = [r["fold"] for r in rows]
    summary["identities"] = made
    if peers:
        write_csv(out / "peers_folds.csv", peer_rows, fields=["model", "fold", "test_patients", "images", *REPORTED])
        summary["peers"] = {name: summarise([r for r in peer_rows if r["model"] == name]) for name in peers}
    write_json(out / "cv_summary.json", summary)
    bar_chart({k: summary[k]["folds"] for k in REPORTED}, [f"fold {r['fold']}" for r in rows], out / "cv_metrics.png")
    return summary
