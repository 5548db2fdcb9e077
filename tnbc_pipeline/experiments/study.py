"""The augmentation study: which offline augmentations earn their keep, measured on unseen patients.

Arms, in the order each fold regenerates its one dataset folder (so every step is an incremental
rebuild: only the variants an arm adds are rendered, kept ones are hard-linked):

    none            originals only, and no random flip/rot90 of the training crops (random crops only)
    fliprot         flips + the 30-degree rotations offline, flip/rot90 online
    elastic_A_S     fliprot + one elastic (alpha A, sigma S) variant, for each setting given
    full            the default dataset config: fliprot + elastic + grid distortion + shrink

Every arm trains the same train config (same steps: the budget is fixed, only the data differs) on the
same folds of the grouped k-fold and is scored on the fold's test patients (originals, never augmented).

    OUT/fold{i}/TNBC/             the fold's dataset, regenerated arm after arm
    OUT/{arm}/fold{i}/run/        each arm's run with eval_test/
    OUT/{arm}/fold{i}/result.json the eval summary, that regeneration's seconds and rendered items, the
                                  elastic displacement it measured, and the identities of run and eval
    OUT/{arm}/fold{i}/identity.json   what that result depends on (see experiments/cv.py)
    OUT/study_runs.csv            one row per (arm, fold)
    OUT/study_summary.json        {arm: {metric: {mean, sd, folds}, regen_seconds, rendered, elastic}} + settings
    OUT/study_metrics.png         grouped bars: one group per metric, one bar per arm (mean over folds)

Resumable: an arm whose fold was scored with the same identity is neither rebuilt nor retrained; one whose
settings changed is run again (its run refused unless `force`, as in cv).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, TrainConfig, to_dict
from tnbc_pipeline.data.layouts import open_release
from tnbc_pipeline.experiments.cv import (REPORTED, Scoring, fold_config, fold_identities, fold_row,
                                          mark, scored_fold, summarise)
from tnbc_pipeline.io import read_json, write_csv, write_json

log = logging.getLogger(__name__)

OLD_STRENGTH = (110.0, 8.0)  # alpha, sigma matching the old dataset's measured 2.85 px mean shift
DEFAULT_ELASTIC = (OLD_STRENGTH, (400.0, 10.0), (1300.0, 8.0))  # ~3, ~10 and ~33 px mean displacement


def arms(base: DatasetConfig, elastic: tuple[tuple[float, float], ...] = DEFAULT_ELASTIC
         ) -> dict[str, tuple[DatasetConfig, bool]]:
    """Arm name -> (dataset config, online flip/rot90), in regeneration order; `base` gives everything
    but the augmentation (seed, split, PNG settings) and is itself the `full` arm."""
    aug = base.augment
    # The defaults' flips and rotations, nothing else.
    fliprot = AugmentConfig(alpha=(), sigma=(), distort=(), shrink=(), splits=aug.splits or ("train", "valid"))
    out = {"none": (dataclasses.replace(base, augment=dataclasses.replace(fliprot, splits=())), False),
           "fliprot": (dataclasses.replace(base, augment=fliprot), True)}
    for alpha, sigma in elastic:
        name = f"elastic_{alpha:g}_{sigma:g}"
        out[name] = (dataclasses.replace(base, augment=dataclasses.replace(fliprot, alpha=(alpha,), sigma=(sigma,))),
                     True)
    out["full"] = (base, True)
    return out


def _arm_fold(raw: Path, out: Path, arm: str, fold: int, folds: int, data_cfg: DatasetConfig,
              train_cfg: TrainConfig, scoring: Scoring, workers: int | None, progress: bool,
              force: bool) -> dict[str, Any]:
    folder = out / arm / f"fold{fold}"
    data_dir = out / f"fold{fold}" / "TNBC"
    result = scored_fold(folder, raw, data_dir, fold_config(data_cfg, fold, folds), train_cfg, scoring, workers,
                         progress, force)
    if "elastic" not in result["dataset"]:  # measured by the regeneration that made this arm's data
        result["dataset"]["elastic"] = read_json(data_dir / "manifest.json").get("elastic", [])
        write_json(folder / "result.json", result)
    return result


def augmentation_study(raw: Path, out: Path, folds: int, only: list[int], data_cfg: DatasetConfig,
                       train_cfg: TrainConfig, elastic: tuple[tuple[float, float], ...] = DEFAULT_ELASTIC,
                       scoring: Scoring = Scoring(), workers: int | None = None,
                       progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Run (or resume) every arm on folds `only` of a `folds`-fold patient split; write the tables and chart."""
    from tnbc_pipeline.report import bar_chart

    out = Path(out)
    plan = arms(data_cfg, elastic)
    settings = {"folds": folds, "evaluated_folds": list(only),
                "scoring": scoring.to_json(),
                "train_config": to_dict(train_cfg), "arms": list(plan)}
    open_release(raw, data_cfg.mask_threshold, data_cfg.layout)  # a bad release is refused before anything is written
    mark(out, "study", settings)
    rows: list[dict[str, Any]] = []
    made: list[dict[str, Any]] = []
    for fold in only:
        for arm, (cfg, flip_rot) in plan.items():
            log.info("study: fold %d, arm %s", fold, arm)
            arm_train = dataclasses.replace(train_cfg, flip_rot=flip_rot)
            s = _arm_fold(Path(raw), out, arm, fold, folds, cfg, arm_train, scoring, workers, progress, force)
            disp = s["dataset"]["elastic"]
            rows.append({"arm": arm, **fold_row(fold, s), "regen_seconds": s["dataset"]["seconds"],
                         "rendered": s["dataset"]["rendered"], "items": s["dataset"]["items"],
                         "elastic_mean_disp_px": " ".join(f"{d['mean_disp_px']:g}" for d in disp),
                         "elastic_p99_disp_px": " ".join(f"{d['p99_disp_px']:g}" for d in disp)})
            made.append({"arm": arm, **fold_identities(fold, s)})
    write_csv(out / "study_runs.csv", rows)
    summary: dict[str, Any] = {}
    for arm in plan:
        mine = [r for r in rows if r["arm"] == arm]
        summary[arm] = {**summarise(mine), "regen_seconds": [r["regen_seconds"] for r in mine],
                        "rendered": [r["rendered"] for r in mine], "items": [r["items"] for r in mine],
                        "elastic_mean_disp_px": mine[0]["elastic_mean_disp_px"],
                        "elastic_p99_disp_px": mine[0]["elastic_p99_disp_px"],
                        "online_flip_rot": plan[arm][1], "augment": to_dict(plan[arm][0].augment)}
    summary["settings"] = settings
    summary["identities"] = made
    write_json(out / "study_summary.json", summary)
    bar_chart({k: [summary[a][k]["mean"] for a in plan] for k in REPORTED}, list(plan), out / "study_metrics.png")
    return summary
