"""eval and infer on a tiny model trained for a few steps on synthetic records."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, ModelConfig, RecordsConfig, TrainConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records
from tnbc_pipeline.data.synth import synth_case
from tnbc_pipeline.errors import TnbcError

TINY = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=4, patch=32, val_batch_size=4, epoch_infer=0,
                   shuffle_buffer=16, model=ModelConfig(levels=3, base_filters=4))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> tuple[Path, Path]:
    from tnbc_pipeline.model.train import train

    base = tmp_path_factory.mktemp("evalrun")
    cfg = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(), sigma=(), distort=(), shrink=()))
    build_dataset(release_root, base / "TNBC", cfg, workers=1, progress=False)
    build_records(base / "TNBC", None, RecordsConfig(), progress=False)
    records = base / "TNBC" / "tfrecords"
    train(records, base / "run", TINY, progress=False)
    return base / "run", records


def test_eval_writes_every_file(run: tuple[Path, Path]) -> None:
    from tnbc_pipeline.evaluation.evaluate import evaluate

    run_dir, records = run
    summary = evaluate(run_dir, records, "test", progress=False)
    out = run_dir / "eval_test"
    for name in ("per_image.csv", "per_patient.csv", "summary.json", "evaluation.csv", "comparison.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    chosen = json.loads((run_dir / "threshold.json").read_text())
    assert chosen["chosen_on"] == "valid" and summary["threshold"] == chosen["threshold"]
    assert summary["instances"] == "components" and summary["min_area"] == 30  # no interior channel, no split
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    splits = json.loads((records.parent / "splits.json").read_text())
    assert {r["patient"] for r in rows} == set(splits["test"]) == set(summary["patients"])
    assert all(r["op"] == "original" for r in rows) and len(rows) == summary["images"]
    for r in rows:
        assert 0 <= float(r["aji"]) <= 1 and 0 <= float(r["dice"]) <= 1
    old = {r["metric"]: float(r["value"]) for r in csv.DictReader(open(out / "evaluation.csv"))}
    assert list(old)[:2] == ["loss", "binary_accuracy"] and {"dice", "iou", "aji", "f1", "pq"} <= set(old)
    assert old["dice"] == pytest.approx(summary["mean_over_images"]["dice"])


def test_a_model_with_the_interior_channel_splits_nuclei_by_it(run: tuple[Path, Path], tmp_path: Path) -> None:
    import dataclasses

    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.evaluation.infer import infer
    from tnbc_pipeline.model.train import train

    _, records = run
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, interior=1))
    train(records, tmp_path / "run", cfg, progress=False)
    summary = evaluate(tmp_path / "run", records, "test", split_touching=True, min_area=5, progress=False)
    assert summary["instances"] == "interior" and summary["min_area"] == 5
    assert 0 <= summary["mean_over_images"]["aji"] <= 1
    plain = evaluate(tmp_path / "run", records, "test", min_area=5, instances="components", out=tmp_path / "cc",
                     progress=False)
    assert plain["instances"] == "components" and plain["mean_over_images"]["dice"] == summary["mean_over_images"]["dice"]
    assert json.loads((tmp_path / "run" / "eval_test" / "summary.json").read_text())["instances"] == "interior"
    assert json.loads((tmp_path / "cc" / "summary.json").read_text())["instances"] == "components"
    with pytest.raises(TnbcError, match="no interior channel"):
        evaluate(run[0], records, "test", instances="interior", progress=False)
    images = records.parent / "test" / "images"
    rows = infer(tmp_path / "run", images, tmp_path / "out", masks=records.parent / "test" / "masks", progress=False)
    assert len(rows) == len(list(images.iterdir()))
    mask = cv2.imread(str(next((tmp_path / "out" / "masks").iterdir())), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}  # the mask channel only, binary


def test_a_threshold_chosen_for_another_model_is_chosen_again(run: tuple[Path, Path], tmp_path: Path) -> None:
    import dataclasses

    from tnbc_pipeline.evaluation.evaluate import RunModel, evaluate
    from tnbc_pipeline.model.train import train

    run_dir, records = run
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    stale = {"threshold": 0.123, "chosen_on": "valid", "model_sha256": "0" * 64}
    (copy / "threshold.json").write_text(json.dumps(stale))
    assert RunModel(copy).chosen_threshold() is None and RunModel(copy).threshold() == 0.5
    summary = evaluate(copy, records, "test", progress=False)
    chosen = json.loads((copy / "threshold.json").read_text())
    assert summary["threshold"] == chosen["threshold"] != 0.123 and chosen["model_sha256"] == RunModel(copy).model_sha256
    train(records, copy, dataclasses.replace(TINY, seed=9), force=True, progress=False)  # a new model
    assert RunModel(copy).chosen_threshold() is None


def test_eval_command_prints_a_summary(run: tuple[Path, Path]) -> None:
    from tnbc_pipeline.cli import main

    run_dir, records = run
    result = CliRunner().invoke(main, ["-q", "eval", "--run-dir", str(run_dir), "--records", str(records),
                                       "--split", "valid", "--threshold", "0.5", "--split-touching"])
    assert result.exit_code == 0, result.output
    assert "threshold 0.50" in result.output and "aji" in result.output
    assert json.loads((run_dir / "eval_valid" / "summary.json").read_text())["split_touching"] is True


def _images(folder: Path) -> Path:
    folder.mkdir()
    big, big_mask = synth_case(np.random.default_rng(5), size=700)
    cv2.imwrite(str(folder / "wide.png"), big[:500, :, ::-1])  # 700 x 500: larger than a tile, not a multiple
    small, _ = synth_case(np.random.default_rng(6), size=96)
    cv2.imwrite(str(folder / "small.jpg"), small[:, :, ::-1])
    cv2.imwrite(str(folder / "grey.tif"), small[..., 0])
    rgba = np.dstack([small[:, :, ::-1], np.full((96, 96), 255, np.uint8)])
    cv2.imwrite(str(folder / "alpha.png"), rgba)
    (folder.parent / "truth").mkdir()
    cv2.imwrite(str(folder.parent / "truth" / "wide.png"), big_mask[:500])
    return folder


def test_infer_any_size_and_format(run: tuple[Path, Path], tmp_path: Path) -> None:
    from tnbc_pipeline.evaluation.infer import infer

    run_dir, _ = run
    images = _images(tmp_path / "images")
    only_wide = tmp_path / "only"
    only_wide.mkdir()
    shutil.copy(images / "wide.png", only_wide / "wide.png")
    rows = infer(run_dir, only_wide, tmp_path / "out_metrics", masks=tmp_path / "truth", progress=False)
    assert len(rows) == 1 and (tmp_path / "out_metrics" / "metrics.csv").exists()
    assert (tmp_path / "out_metrics" / "comparison.png").exists()
    infer(run_dir, images, tmp_path / "out", tta=True, progress=False)
    for name, shape in (("wide", (500, 700)), ("small", (96, 96)), ("grey", (96, 96)), ("alpha", (96, 96))):
        mask = cv2.imread(str(tmp_path / "out" / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        prob = cv2.imread(str(tmp_path / "out" / "probabilities" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        over = cv2.imread(str(tmp_path / "out" / "overlays" / f"{name}.png"))
        assert mask.shape == prob.shape == shape and over.shape == (*shape, 3)
        assert set(np.unique(mask)) <= {0, 255}


def test_overlay_draws_contours_without_wrapping() -> None:
    from tnbc_pipeline.evaluation.infer import overlay

    image = np.full((20, 20, 3), 250, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = overlay(image, mask)
    assert (out[5, 5] == (0, 255, 0)).all() and (out[10, 10] == 250).all() and (image == 250).all()
    labels = mask.astype(np.int32)
    labels[5:15, 10:15] = 2  # two touching nuclei: the line between them is drawn too
    out = overlay(image, labels)
    assert (out[10, 9] == (0, 255, 0)).all() and (out[10, 10] == (0, 255, 0)).all() and (out[10, 7] == 250).all()


def test_infer_errors_are_clear(run: tuple[Path, Path], tmp_path: Path) -> None:
    from tnbc_pipeline.evaluation.infer import infer

    run_dir, _ = run
    (tmp_path / "empty").mkdir()
    with pytest.raises(TnbcError, match="no images"):
        infer(run_dir, tmp_path / "empty", tmp_path / "o", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(TnbcError, match=r"x\.jpg: unreadable image"):
        infer(run_dir, tmp_path / "bad", tmp_path / "o", progress=False)
    (tmp_path / "norun").mkdir()
    with pytest.raises(TnbcError, match="no model.keras"):
        infer(tmp_path / "norun", tmp_path / "bad", tmp_path / "o", progress=False)


def test_a_model_with_a_lambda_layer_is_refused(run: tuple[Path, Path], tmp_path: Path) -> None:
    import keras

    from tnbc_pipeline.evaluation.evaluate import RunModel

    run_dir, _ = run
    bad = tmp_path / "lambda_run"
    bad.mkdir()
    shutil.copy(run_dir / "config.json", bad / "config.json")
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: x[..., :1] * 0 + 1)(inputs)
    keras.Model(inputs, outputs).save(bad / "model.keras")
    with pytest.raises(TnbcError, match="cannot load the model safely"):
        RunModel(bad)
