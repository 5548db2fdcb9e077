"""tnbc cv: every patient tested exactly once, the summary files, and resuming fold by fold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tnbc_pipeline.config import (DEFAULT_TUNE_ON, AugmentConfig, DatasetConfig, ModelConfig, TrainConfig, TuneOn,
                                  choices)
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.experiments.cv import REPORTED, Scoring, cross_validate

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
    for k in REPORTED:  # the fold values are the folds' own eval summaries; mean and sd are theirs
        scored = [json.loads((out / f"fold{i}" / "run" / "eval_test" / "summary.json").read_text())
                  ["mean_over_images"][k] for i in range(3)]
        assert summary[k]["folds"] == scored
        assert summary[k]["mean"] == pytest.approx(np.mean(scored), abs=1e-5)
        assert summary[k]["sd"] == pytest.approx(np.std(scored, ddof=1), abs=1e-5)
    made = summary["identities"]
    for i in range(3):
        run_id = json.loads((out / f"fold{i}" / "run" / "identity.json").read_text())["digest"]
        eval_id = json.loads((out / f"fold{i}" / "run" / "eval_test" / "identity.json").read_text())["digest"]
        assert (made[i]["run_identity"], made[i]["eval_identity"]) == (run_id, eval_id)
    assert json.loads((out / "cv_summary.json").read_text())["dice"]["folds"] == summary["dice"]["folds"]
    assert (out / "cv_metrics.png").stat().st_size > 0
    from benchmarks.zoo_table import curve_row, model_row  # the zoo's tables read exactly these files

    done = json.loads((out / "fold0" / "run" / "done.json").read_text())
    row = model_row(out).split(" | ")
    assert row[0] == "| unet" and row[1] == f"{done['params']:,}" and done["params"] > 0 and done["peak_rss_mb"] > 0
    assert row[4] == f"{summary['dice']['mean']:.3f} ± {summary['dice']['sd']:.3f}"
    assert row[-1] == f"{done['precision']} |"  # every fold in the same precision here
    from tnbc_pipeline.report import read_history

    histories = [read_history(out / f"fold{i}" / "run" / "history.csv") for i in range(3)]
    curve = curve_row(out).split(" | ")  # TINY trains one epoch: the three folds' mean loss / valid Dice
    assert curve[1] == (f"{np.mean([h[0]['loss'] for h in histories]):.3f} / "
                        f"{np.mean([h[0]['val_dice_coef'] for h in histories]):.2f} |")
    stamp = (out / "fold1" / "run" / "model.keras").stat().st_mtime_ns
    again = cross_validate(release_root, out, 3, DATA, TINY, workers=1, progress=False)
    assert again["dice"] == summary["dice"]  # nothing retrained or re-scored
    assert (out / "fold1" / "run" / "model.keras").stat().st_mtime_ns == stamp


def test_cv_never_reports_old_results_for_new_settings(release_root: Path, tmp_path: Path) -> None:
    import dataclasses

    out = tmp_path / "cv"
    first = cross_validate(release_root, out, 4, DATA, TINY, only=[1], workers=1, progress=False)
    stamp = (out / "fold1" / "run" / "model.keras").stat().st_mtime_ns
    # a second call for another fold: the summary covers both (fold 1 as the first call scored it)
    both = cross_validate(release_root, out, 4, DATA, TINY, only=[2], workers=1, progress=False)
    assert both["summarised_folds"] == [1, 2] and both["settings"]["evaluated_folds"] == [2]
    assert both["aji"]["folds"][0] == first["aji"]["folds"][0]
    assert [r["fold"] for r in csv.DictReader(open(out / "cv_folds.csv"))] == ["1", "2"]
    longer = dataclasses.replace(TINY, epochs=2)
    with pytest.raises(TnbcError, match=r"fold1/run: made with other settings: config.epochs: 1 -> 2"):
        cross_validate(release_root, out, 4, DATA, longer, only=[1], workers=1, progress=False)
    # other scoring: scored again, not retrained
    rescored = cross_validate(release_root, out, 4, DATA, TINY, only=[1], scoring=Scoring({"min_area": 3}),
                              workers=1, progress=False)
    assert (out / "fold1" / "run" / "model.keras").stat().st_mtime_ns == stamp
    assert rescored["identities"][0]["eval_identity"] != first["identities"][0]["eval_identity"]
    assert rescored["identities"][0]["run_identity"] == first["identities"][0]["run_identity"]
    assert rescored["summarised_folds"] == [1]  # fold 2 was scored with the other min_area: left out
    assert json.loads((out / "fold1" / "result.json").read_text())["min_area"] == 3
    assert list(csv.DictReader(open(out / "cv_folds.csv")))[0]["min_area"] == "3"
    # force: the fold is trained again with the new settings, and the summary says so
    again = cross_validate(release_root, out, 4, DATA, longer, only=[1], workers=1, progress=False, force=True)
    run_id = json.loads((out / "fold1" / "run" / "identity.json").read_text())
    assert run_id["settings"]["config"]["epochs"] == 2 and again["identities"][0]["run_identity"] == run_id["digest"]
    assert json.loads((out / "fold1" / "run" / "done.json").read_text())["epochs_run"] == 2
    assert again["settings"]["train_config"]["epochs"] == 2
    # another dataset (other augmentation): the fold's data, records and run all change
    other = dataclasses.replace(DATA, augment=dataclasses.replace(DATA.augment, rotations=(180.0,)))
    with pytest.raises(TnbcError, match="input records_index"):
        cross_validate(release_root, out, 4, other, longer, only=[1], workers=1, progress=False)


def test_cv_command_runs_a_subset_of_folds(release_root: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.cli import main

    (tmp_path / "train.toml").write_text("epochs = 1\nsteps_per_epoch = 1\nbatch_size = 4\npatch = 32\n"
                                         "val_batch_size = 4\nepoch_infer = 0\nshuffle_buffer = 16\n"
                                         "[model]\nlevels = 2\nbase_filters = 4\n")
    (tmp_path / "data.toml").write_text("[augment]\nsplits = []\n")
    result = CliRunner().invoke(main, ["-q", "cv", "--raw", str(release_root), "--out", str(tmp_path / "cv"),
                                       "--folds", "4", "--fold", "2", "--seed", "7",
                                       "--train-config", str(tmp_path / "train.toml"),
                                       "--dataset-config", str(tmp_path / "data.toml"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "aji" in result.output and not (tmp_path / "cv" / "fold0").exists()
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert summary["settings"]["evaluated_folds"] == [2] and summary["aji"]["sd"] == 0.0
    # --seed overrides the train config's (default 0) and is part of the fold run's identity
    assert json.loads((tmp_path / "cv" / "fold2" / "run" / "config.json").read_text())["config"]["seed"] == 7
    bad = CliRunner().invoke(main, ["cv", "--raw", str(release_root), "--folds", "3", "--fold", "5"])
    assert bad.exit_code == 1 and "--fold 5: must be in [0, 3)" in bad.output


def test_augmentation_study_regenerates_incrementally_and_resumes(release_root: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    from tnbc_pipeline.experiments.study import arms, augmentation_study

    base = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(20.0,), sigma=(4.0,), distort=(0.02,),
                                               shrink=()))
    plan = arms(base, ((20.0, 4.0), (60.0, 4.0)))
    assert list(plan) == ["none", "fliprot", "elastic_20_4", "elastic_60_4", "full"]
    assert plan["none"][0].augment.splits == () and plan["none"][1] is False and plan["full"] == (base, True)
    assert plan["elastic_60_4"][0].augment.alpha == (60.0,) and not plan["elastic_60_4"][0].augment.distort
    small = {k: v for k, v in plan.items() if k in ("none", "elastic_20_4")}
    monkeypatch.setattr("tnbc_pipeline.experiments.study.arms", lambda b, e: small)  # two arms keep it short
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


def test_study_command_passes_seed_and_epochs_to_every_arm(release_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--seed and --epochs override the train config of every arm's runs (the arms' seed noise); without them
    the config's own values stand."""
    from tnbc_pipeline.cli import main

    seen: list[TrainConfig] = []

    def fake_study(raw, out, folds, only, data_cfg, train_cfg, *args, **kwargs):
        seen.append(train_cfg)
        return {"settings": {"arms": []}}

    monkeypatch.setattr("tnbc_pipeline.experiments.study.augmentation_study", fake_study)
    for flags in (["--seed", "7", "--epochs", "3"], []):
        result = CliRunner().invoke(main, ["-q", "study", "--raw", str(release_root), *flags])
        assert result.exit_code == 0, result.output
    assert [(c.seed, c.epochs) for c in seen] == [(7, 3), (TrainConfig().seed, TrainConfig().epochs)]


def test_a_changed_search_grid_is_a_new_fold_identity(release_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold scored with the post-processing chosen on one grid is not reused once the grid changes."""
    from tnbc_pipeline.evaluation.tune import AREA_FLOOR, SEARCH
    from tnbc_pipeline.experiments.cv import fold_identity

    # A fixed policy: "auto" would time the default model's training (~1 min; tests/model/test_speed.py covers it)
    train = TrainConfig(precision="float32")
    before = fold_identity(release_root, DatasetConfig(), train, Scoring())
    assert before.digest == fold_identity(release_root, DatasetConfig(), train, Scoring()).digest
    pooled = [fold_identity(release_root, DatasetConfig(), train, Scoring(tune_on=t)).digest
              for t in choices(TuneOn)]  # the images the post-processing is chosen on are part of it
    assert len(set(pooled)) == 2 and pooled[choices(TuneOn).index(DEFAULT_TUNE_ON)] == before.digest
    monkeypatch.setitem(SEARCH, "min_core", (4, 8))
    grid = fold_identity(release_root, DatasetConfig(), train, Scoring()).digest
    monkeypatch.setitem(AREA_FLOOR, "fraction", AREA_FLOOR["fraction"] / 2)  # the floor's rule is part of it too
    floor = fold_identity(release_root, DatasetConfig(), train, Scoring()).digest
    assert len({before.digest, grid, floor}) == 3
