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

from tnbc_pipeline.config import (DEFAULT_TUNE_ON, AugmentConfig, DatasetConfig, ModelConfig, RecordsConfig,
                                  TrainConfig, TuneOn, choices, split_names)
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records
from tnbc_pipeline.data.synth import synth_case
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation import tune

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


def _truths(records: Path, tune_on: str) -> list[np.ndarray]:
    """The truth labels of the originals a choice `tune_on` ("valid" or "valid+train") is made on."""
    return [truth for split in split_names(tune_on) for _, truth, *_ in tune.examples(records, split, False)]


def test_eval_writes_every_file(run: tuple[Path, Path]) -> None:
    from tnbc_pipeline.evaluation.evaluate import evaluate

    run_dir, records = run
    summary = evaluate(run_dir, records, "test", progress=False)
    out = run_dir / "eval_test"
    for name in ("per_image.csv", "per_patient.csv", "summary.json", "evaluation.csv", "comparison.png",
                 "identity.json", "nuclei.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    chosen = json.loads((run_dir / "postprocess.json").read_text())
    assert chosen["chosen_on"] == DEFAULT_TUNE_ON == summary["tune_on"]
    assert summary["postprocess"] == chosen["postprocess"]
    threshold, min_area = summary["postprocess"]["threshold"], summary["postprocess"]["min_area"]
    assert threshold == summary["threshold"] and min_area == summary["min_area"]
    assert set(chosen["scores"]) == {"threshold", "min_area", "min_score", "at_edge", "area_floor"}  # no core fields
    floor = tune.area_floor(_truths(records, DEFAULT_TUNE_ON))  # the truth's of the images it is chosen on
    assert chosen["scores"]["area_floor"] == floor and min(int(v) for v in chosen["scores"]["min_area"]) == floor
    assert list(chosen["scores"]["threshold"]) == [f"{t:.2f}" for t in tune.THRESHOLDS]  # 0.05, 0.10, ..., 0.95
    assert chosen["scores"]["threshold"][f"{threshold:.2f}"] == max(chosen["scores"]["threshold"].values())
    assert chosen["scores"]["min_area"][str(min_area)] == max(chosen["scores"]["min_area"].values())
    assert chosen["criterion"] == "mean aji" and summary["instances"] == "components"
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    splits = json.loads((records.parent / "splits.json").read_text())
    assert {r["patient"] for r in rows} == set(splits["test"]) == set(summary["patients"])
    assert all(r["op"] == "original" for r in rows) and len(rows) == summary["images"]
    nuclei = list(csv.DictReader(open(out / "nuclei.csv")))  # the objects are exactly the nuclei scored
    assert len(nuclei) == sum(int(r["n_pred"]) for r in rows)
    for r in rows:
        labels = cv2.imread(str(out / "labels" / f"{r['key']}.png"), cv2.IMREAD_UNCHANGED)
        assert len(np.unique(labels[labels > 0])) == int(r["n_pred"])
        assert len(json.loads((out / "geojson" / f"{r['key']}.geojson").read_text())["features"]) == int(r["n_pred"])
    for k in ("dice", "aji", "f1"):  # the summary is the mean of the rows
        assert summary["mean_over_images"][k] == pytest.approx(np.mean([float(r[k]) for r in rows]), abs=1e-5)
    old = {r["metric"]: float(r["value"]) for r in csv.DictReader(open(out / "evaluation.csv"))}
    assert list(old)[:2] == ["loss", "binary_accuracy"] and {"dice", "iou", "aji", "f1", "pq"} <= set(old)
    assert old["dice"] == pytest.approx(summary["mean_over_images"]["dice"])


def _constant_run(run_dir: Path, dest: Path, logit: float) -> Path:
    """A run folder whose model predicts probability sigmoid(logit) everywhere (a known answer)."""
    import keras

    dest.mkdir()
    shutil.copy(run_dir / "config.json", dest / "config.json")
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(logit))
    keras.Model(inputs, conv(inputs)).save(dest / "model.keras")
    return dest


def test_eval_scores_a_model_of_known_output(run: tuple[Path, Path], tmp_path: Path) -> None:
    """A model that calls every pixel nucleus: one object covering the image. Its scores follow from the
    truth masks alone: dice 2|T| / (|T| + N), recall 1, no match at IoU > 0.5, AJI |T| / (n_true N)."""
    from scipy import ndimage

    from tnbc_pipeline.evaluation.evaluate import evaluate

    run_dir, records = run
    everything = _constant_run(run_dir, tmp_path / "all", 20.0)
    summary = evaluate(everything, records, "test", {"min_area": 0}, progress=False)
    rows = {r["key"]: r for r in csv.DictReader(open(everything / "eval_test" / "per_image.csv"))}
    masks = sorted((records.parent / "test" / "masks").glob("*__original.png"))
    assert sorted(rows) == [m.stem for m in masks]
    for path in masks:
        truth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) > 0
        t, n = int(truth.sum()), truth.size
        n_true = ndimage.label(truth, np.ones((3, 3)))[1]
        r = rows[path.stem]
        assert float(r["dice"]) == pytest.approx(2 * t / (t + n), abs=1e-5)
        assert float(r["recall"]) == 1.0 and float(r["precision"]) == pytest.approx(t / n, abs=1e-5)
        assert float(r["aji"]) == pytest.approx(t / (n_true * n), abs=1e-5)
        assert (int(r["n_pred"]), int(r["n_true"]), int(r["tp"]), float(r["f1"])) == (1, n_true, 0, 0.0)
    assert summary["postprocess_source"] == "chosen on valid" and summary["threshold"] == 0.5  # all ties: 0.5
    nothing = _constant_run(run_dir, tmp_path / "none", -20.0)
    m = evaluate(nothing, records, "test", {"threshold": 0.5}, progress=False)["mean_over_images"]
    assert (m["dice"], m["aji"], m["f1"], m["recall"], m["precision"]) == (0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("target, depth", [("core", 1), ("distance", 3)])
def test_a_model_with_the_interior_channel_splits_nuclei_by_it(run: tuple[Path, Path], tmp_path: Path,
                                                              target: str, depth: int) -> None:
    import dataclasses

    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.inference.infer import infer
    from tnbc_pipeline.model.train import train

    _, records = run
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, interior=depth, interior_target=target))
    train(records, tmp_path / "run", cfg, progress=False)
    summary = evaluate(tmp_path / "run", records, "test", {"min_area": 5}, progress=False)
    assert summary["instances"] == "interior" and summary["min_area"] == 5
    plain = evaluate(tmp_path / "run", records, "test", {"min_area": 5, "instances": "components"},
                     out=tmp_path / "cc", progress=False)
    assert plain["instances"] == "components" and plain["mean_over_images"]["dice"] == summary["mean_over_images"]["dice"]
    assert json.loads((tmp_path / "run" / "eval_test" / "summary.json").read_text())["instances"] == "interior"
    assert json.loads((tmp_path / "cc" / "summary.json").read_text())["instances"] == "components"
    with pytest.raises(TnbcError, match="no interior channel"):
        evaluate(run[0], records, "test", {"instances": "interior"}, progress=False)
    images = records.parent / "test" / "images"
    infer(tmp_path / "run", images, tmp_path / "out", progress=False)
    assert len(list((tmp_path / "out" / "masks").iterdir())) == len(list(images.iterdir()))
    mask = cv2.imread(str(next((tmp_path / "out" / "masks").iterdir())), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}  # the mask channel only, binary


def test_eval_results_know_what_made_them(run: tuple[Path, Path], tmp_path: Path) -> None:
    """Same settings: reused. Another threshold, min-area, instance method or model: scored again."""
    import dataclasses

    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.model.train import train

    run_dir, records = run
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    shutil.rmtree(copy / "eval_test", ignore_errors=True)
    first = evaluate(copy, records, "test", progress=False)
    stamp = (copy / "eval_test" / "summary.json").stat().st_mtime_ns
    assert evaluate(copy, records, "test", progress=False) == first
    assert (copy / "eval_test" / "summary.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    other_area, other_threshold = first["min_area"] + 7, 0.35 if first["threshold"] != 0.35 else 0.4
    for overrides, key, value in (({"min_area": other_area}, "min_area", other_area),
                                  ({"threshold": other_threshold}, "threshold", other_threshold),
                                  ({"instances": "watershed"}, "instances", "watershed")):
        summary = evaluate(copy, records, "test", overrides, progress=False)
        saved = json.loads((copy / "eval_test" / "summary.json").read_text())
        assert summary[key] == saved[key] == saved["postprocess"][key] == value and saved["identity"] != first["identity"]
    assert json.loads((copy / "postprocess.json").read_text())["postprocess"] == first["postprocess"]  # flags: not saved
    train(records, copy, dataclasses.replace(TINY, seed=9), force=True, progress=False)  # a new model
    assert not (copy / "postprocess.json").exists()
    again = evaluate(copy, records, "test", progress=False)
    assert again["model_sha256"] != first["model_sha256"] and again["identity"] != first["identity"]
    assert json.loads((copy / "postprocess.json").read_text())["model_sha256"] == again["model_sha256"]


def test_the_choice_is_made_on_the_images_asked_for_and_only_the_default_is_saved(run: tuple[Path, Path],
                                                                                tmp_path: Path) -> None:
    from tnbc_pipeline.data.records import index_sha256
    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.inference.predictor import RunModel

    run_dir, records = run
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    shutil.rmtree(copy / "eval_test", ignore_errors=True)
    (copy / "postprocess.json").unlink(missing_ok=True)
    assert len(_truths(records, "valid+train")) > len(_truths(records, "valid")) > 0  # two different image sets
    model, index = RunModel(copy), index_sha256(records)
    other = next(t for t in choices(TuneOn) if t != DEFAULT_TUNE_ON)
    digests = []
    for tune_on in (DEFAULT_TUNE_ON, other):  # the default's choice first: the other must not replace it
        post, source, scores = tune.resolve(model, records, index, {}, "aji", False, tune_on)
        assert source == f"chosen on {tune_on}" and scores["area_floor"] == tune.area_floor(_truths(records, tune_on))
        cases = [(model.predict(x), t) for split in split_names(tune_on)
                 for x, t, *_ in tune.examples(records, split, False)]
        best = tune.score(post, cases, model.channels, "aji")  # the mean over exactly those images, as recorded
        assert scores["min_score"][tune._key(post.min_score)] == pytest.approx(best, abs=5e-5)  # searched last
        digests.append(tune.tuning_identity(model, index, model.default_postprocess(),
                                            ["threshold", "min_area", "min_score"], "aji", tune_on).digest)
    saved = json.loads((copy / "postprocess.json").read_text())  # only the default choice is the run's (infer's)
    assert saved["chosen_on"] == DEFAULT_TUNE_ON and saved["tuning"] == digests[0] != digests[1]
    summary = evaluate(copy, records, "test", progress=False, tune_on=other, out=tmp_path / "other")
    assert summary["tune_on"] == other and summary["postprocess_source"] == f"chosen on {other}"
    default = evaluate(copy, records, "test", progress=False)  # the saved default choice, reused
    assert default["postprocess_source"] == f"postprocess.json (chosen on {DEFAULT_TUNE_ON})"


def test_a_choice_made_for_another_model_is_not_used(run: tuple[Path, Path], tmp_path: Path, caplog) -> None:
    from tnbc_pipeline.inference.predictor import RunModel

    run_dir, records = run
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    stale = {"postprocess": {"threshold": 0.123}, "model_sha256": "0" * 64, "tuning": "x", "chosen_on": "valid"}
    (copy / "postprocess.json").write_text(json.dumps(stale))
    model = RunModel(copy)
    assert model.saved_postprocess() is None and "chosen for another model.keras" in caplog.text
    post, source = model.resolve({})
    assert (post.threshold, post.instances, source) == (0.5, "components", "defaults")
    assert "using the defaults threshold=0.5" in caplog.text
    post, source = model.resolve({"min_area": 3})
    assert post.min_area == 3 and post.threshold == 0.5 and source == "defaults + min_area=3"
    (copy / "postprocess.json").write_text("{not json")
    assert RunModel(copy).saved_postprocess() is None  # unreadable: warned and ignored, never a traceback


def test_eval_command_prints_a_summary(run: tuple[Path, Path]) -> None:
    from tnbc_pipeline.cli import main

    run_dir, records = run
    result = CliRunner().invoke(main, ["-q", "eval", "--run-dir", str(run_dir), "--records", str(records),
                                       "--split", "valid", "--threshold", "0.5", "--split-touching"])
    assert result.exit_code == 0, result.output
    assert "threshold 0.50 (given)" in result.output and "nuclei by watershed" in result.output
    summary = json.loads((run_dir / "eval_valid" / "summary.json").read_text())
    assert summary["instances"] == "watershed"
    source = summary["postprocess_source"]  # min_score was not given: chosen on valid
    assert f"min score {summary['postprocess']['min_score']:g} ({source})" in result.output and source != "given"
    both = CliRunner().invoke(main, ["-q", "eval", "--run-dir", str(run_dir), "--records", str(records),
                                     "--split-touching", "--instances", "components"])
    assert both.exit_code == 1 and "contradicts --instances components" in both.output


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
    from tnbc_pipeline.inference.infer import infer

    run_dir, _ = run
    images = _images(tmp_path / "images")
    only_wide = tmp_path / "only"
    only_wide.mkdir()
    shutil.copy(images / "wide.png", only_wide / "wide.png")
    from tnbc_pipeline.evaluation.tables import MaskScorer

    scorer = MaskScorer(tmp_path / "truth")
    infer(run_dir, only_wide, tmp_path / "out_metrics", on_image=scorer, progress=False)
    scorer.write(tmp_path / "out_metrics")
    assert len(scorer.rows) == 1 and (tmp_path / "out_metrics" / "metrics.csv").exists()
    assert (tmp_path / "out_metrics" / "comparison.png").exists()
    record = infer(run_dir, images, tmp_path / "out", {"min_area": 7}, tta=True, progress=False)
    assert record["postprocess"]["min_area"] == 7 and record["tta"] is True
    assert json.loads((tmp_path / "out" / "postprocess.json").read_text()) == record
    for name, shape in (("wide", (500, 700)), ("small", (96, 96)), ("grey", (96, 96)), ("alpha", (96, 96))):
        mask = cv2.imread(str(tmp_path / "out" / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        prob = cv2.imread(str(tmp_path / "out" / "probabilities" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        over = cv2.imread(str(tmp_path / "out" / "overlays" / f"{name}.png"))
        assert mask.shape == prob.shape == shape and over.shape == (*shape, 3)
        assert set(np.unique(mask)) <= {0, 255}
        labels = cv2.imread(str(tmp_path / "out" / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and np.array_equal(labels > 0, mask > 0)  # the nuclei are the mask's
        feats = json.loads((tmp_path / "out" / "geojson" / f"{name}.geojson").read_text())["features"]
        assert len(feats) == len(np.unique(labels[labels > 0]))
    rows = list(csv.DictReader(open(tmp_path / "out" / "nuclei.csv")))
    assert len(rows) == record["nuclei"] and {r["image"] for r in rows} <= {"wide.png", "small.jpg", "grey.tif",
                                                                            "alpha.png"}


def test_overlay_draws_contours_without_wrapping() -> None:
    from tnbc_pipeline.inference.infer import overlay

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
    from tnbc_pipeline.inference.infer import infer

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

    from tnbc_pipeline.inference.predictor import RunModel

    run_dir, _ = run
    bad = tmp_path / "lambda_run"
    bad.mkdir()
    shutil.copy(run_dir / "config.json", bad / "config.json")
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: x[..., :1] * 0 + 1)(inputs)
    keras.Model(inputs, outputs).save(bad / "model.keras")
    with pytest.raises(TnbcError, match="cannot load the model safely"):
        RunModel(bad)
