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


def test_augmentation_study_regenerates_incrementally_and_resumes(release_root: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    from tnbc_pipeline.evaluation.study import arms, augmentation_study

    base = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(20.0,), sigma=(4.0,), distort=(0.02,),
                                               shrink=()))
    plan = arms(base, ((20.0, 4.0), (60.0, 4.0)))
    assert list(plan) == ["none", "fliprot", "elastic_20_4", "elastic_60_4", "full"]
    assert plan["none"][0].augment.splits == () and plan["none"][1] is False and plan["full"] == (base, True)
    assert plan["elastic_60_4"][0].augment.alpha == (60.0,) and not plan["elastic_60_4"][0].augment.distort
    small = {k: v for k, v in plan.items() if k in ("none", "elastic_20_4")}
    monkeypatch.setattr("tnbc_pipeline.evaluation.study.arms", lambda b, e: small)  # two arms keep it short
    out = tmp_path / "study"
    summary = augmentation_study(release_root, out, 4, [1], base, TINY, ((20.0, 4.0),), workers=1, progress=False)
    again = augmentation_study(release_root, out, 4, [1], base, TINY, ((20.0, 4.0),), workers=1, progress=False)
    rows = list(csv.DictReader(open(out / "study_runs.csv")))
    assert [r["arm"] for r in rows] == ["none", "elastic_20_4"]
    none, elastic = rows
    assert int(none["items"]) < int(elastic["items"])
    # The second arm renders only what it adds to the first: fliprot + elastic variants of train/valid.
    assert 0 < int(elastic["rendered"]) < int(elastic["items"]) and float(elastic["regen_seconds"]) > 0
    assert none["elastic_mean_disp_px"] == "" and float(elastic["elastic_mean_disp_px"]) > 0
    config = json.loads((out / "none" / "fold1" / "run" / "config.json").read_text())["config"]
    assert config["flip_rot"] is False
    assert summary["none"]["dice"] == again["none"]["dice"] and summary["settings"]["arms"] == list(small)
    assert (out / "study_metrics.png").stat().st_size > 0


def test_study_command_checks_its_flags(release_root: Path) -> None:
    from tnbc_pipeline.cli import main

    for flag, message in ((["--elastic", "3"], "'3' is not ALPHA:SIGMA"), (["--elastic", "110:0"], "must be > 0"),
                          (["--fold", "4"], "--fold 4: must be in [0, 4)")):
        result = CliRunner().invoke(main, ["study", "--raw", str(release_root), *flag])
        assert result.exit_code != 0 and message in result.output, result.output
