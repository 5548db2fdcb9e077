"""tnbc cv: every patient tested exactly once, the summary files, and resuming fold by fold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, ModelConfig, TrainConfig
from tnbc_pipeline.evaluation.cv import REPORTED, cross_validate

DATA = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(), sigma=(), distort=(), shrink=()))
TINY = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, patch=32, val_batch_size=4, epoch_infer=0,
                   shuffle_buffer=16, model=ModelConfig(levels=2, base_filters=4))


def test_cross_validation_tests_every_patient_once_and_resumes(release_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    summary = cross_validate(release_root, out, 3, DATA, TINY, workers=1, progress=False)
    rows = list(csv.DictReader(open(out / "cv_folds.csv")))
    tested = [p for r in rows for p in r["test_patients"].split()]
    assert sorted(tested) == [f"{i:02d}" for i in range(1, 12)]  # each patient in exactly one test fold
    for i in range(3):
        splits = json.loads((out / f"fold{i}" / "TNBC" / "splits.json").read_text())
        assert not set(splits["test"]) & set(splits["train"] + splits["valid"])
    for k in REPORTED:
        assert len(summary[k]["folds"]) == 3 and 0 <= summary[k]["mean"] <= 1 and summary[k]["sd"] >= 0
    assert json.loads((out / "cv_summary.json").read_text())["dice"]["folds"] == summary["dice"]["folds"]
    assert (out / "cv_metrics.png").stat().st_size > 0
    stamp = (out / "fold1" / "run" / "model.keras").stat().st_mtime_ns
    again = cross_validate(release_root, out, 3, DATA, TINY, workers=1, progress=False)
    assert again["dice"] == summary["dice"]  # nothing retrained or re-scored
    assert (out / "fold1" / "run" / "model.keras").stat().st_mtime_ns == stamp


def test_cv_command_runs_a_subset_of_folds(release_root: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.cli import main

    (tmp_path / "train.toml").write_text("epochs = 1\nsteps_per_epoch = 1\nbatch_size = 4\npatch = 32\n"
                                         "val_batch_size = 4\nepoch_infer = 0\nshuffle_buffer = 16\n"
                                         "[model]\nlevels = 2\nbase_filters = 4\n")
    (tmp_path / "data.toml").write_text("[augment]\nsplits = []\n")
    result = CliRunner().invoke(main, ["-q", "cv", "--raw", str(release_root), "--out", str(tmp_path / "cv"),
                                       "--folds", "4", "--fold", "2", "--train-config", str(tmp_path / "train.toml"),
                                       "--dataset-config", str(tmp_path / "data.toml"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "aji" in result.output and not (tmp_path / "cv" / "fold0").exists()
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert summary["settings"]["evaluated_folds"] == [2] and summary["aji"]["sd"] == 0.0
    bad = CliRunner().invoke(main, ["cv", "--raw", str(release_root), "--folds", "3", "--fold", "5"])
    assert bad.exit_code == 1 and "--fold 5: must be in [0, 3)" in bad.output
