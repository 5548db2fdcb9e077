"""Peers side by side (issue 13): scored by our metrics on the same test images, trained on the same records."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, ModelConfig, RecordsConfig, TrainConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records
from tnbc_pipeline.evaluation import tune
from tnbc_pipeline.evaluation.metrics import truth_labels
from tnbc_pipeline.experiments.cv import REPORTED, cross_validate
from tnbc_pipeline.experiments.peers import score_split

DATA = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(), sigma=(), distort=(), shrink=()))
TINY = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, patch=32, val_batch_size=4, epoch_infer=0,
                   shuffle_buffer=16, stain_jitter=0.05, model=ModelConfig(levels=2, base_filters=4))


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    base = tmp_path_factory.mktemp("peers")
    build_dataset(release_root, base / "TNBC", DATA, workers=1, progress=False)
    build_records(base / "TNBC", None, RecordsConfig(), progress=False)
    return base / "TNBC" / "tfrecords"


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_a_peer_is_scored_by_our_metrics_on_the_test_originals(records: Path, tmp_path: Path) -> None:
    truths = {_digest(img): truth_labels(truth) for img, truth, *_ in tune.examples(records, "test", False)}
    perfect = score_split(records, "test", lambda img: truths[_digest(img)], tmp_path / "perfect", progress=False)
    assert perfect["images"] == len(truths) > 0
    assert {k: perfect["mean_over_images"][k] for k in ("dice", "iou", "aji", "f1", "pq")} == \
        {"dice": 1.0, "iou": 1.0, "aji": 1.0, "f1": 1.0, "pq": 1.0}
    empty = score_split(records, "test", lambda img: np.zeros(img.shape[:2], np.int32), tmp_path / "empty",
                        progress=False)
    assert {k: empty["mean_over_images"][k] for k in ("dice", "aji", "f1", "recall")} == \
        {"dice": 0.0, "aji": 0.0, "f1": 0.0, "recall": 0.0}
    rows = list(csv.DictReader(open(tmp_path / "perfect" / "per_image.csv")))
    assert len(rows) == len(truths) and {r["op"] for r in rows} == {"original"}
    assert "bce" not in rows[0]  # a label image has no probability to take a cross-entropy of
    assert (tmp_path / "perfect" / "per_patient.csv").is_file() and (tmp_path / "perfect" / "evaluation.csv").is_file()


def test_the_plain_unet_peer_is_trained_beside_ours_without_our_extras(release_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    summary = cross_validate(release_root, out, 4, DATA, TINY, only=[1], workers=1, progress=False,
                             peers=("unet_plain",))
    peer = out / "fold1" / "peer_unet_plain"
    config = json.loads((peer / "config.json").read_text())["config"]
    assert (config["model"]["interior"], config["stain_jitter"]) == (0, 0.0)  # ours: 2 and 0.05
    scored = json.loads((peer / "eval_test" / "summary.json").read_text())
    assert (scored["threshold"], scored["instances"], scored["min_area"]) == (0.5, "components", 0)
    rows = list(csv.DictReader(open(out / "peers_folds.csv")))
    assert [r["model"] for r in rows] == ["ours", "unet_plain"]
    assert rows[0]["test_patients"] == rows[1]["test_patients"]  # the same patients
    for k in REPORTED:
        assert summary["peers"]["unet_plain"][k]["folds"] == [scored["mean_over_images"][k]]
        assert float(rows[1][k]) == scored["mean_over_images"][k]
    stamp = (peer / "model.keras").stat().st_mtime_ns
    cross_validate(release_root, out, 4, DATA, TINY, only=[1], workers=1, progress=False, peers=("unet_plain",))
    assert (peer / "model.keras").stat().st_mtime_ns == stamp  # reused, not retrained


def test_stardist_peer_trains_chooses_thresholds_and_is_reused(records: Path, tmp_path: Path) -> None:
    pytest.importorskip("stardist")
    from tnbc_pipeline.experiments.peers import stardist_fold

    folder = tmp_path / "fold" / "peer_stardist"
    summary = stardist_fold(records, folder, TINY, progress=False)
    n_test = sum(1 for _ in tune.examples(records, "test", False))
    assert summary["images"] == n_test and summary["peer"] == "stardist"
    assert set(summary["thresholds"]) == {"prob", "nms"}
    assert json.loads((folder / "model" / "thresholds.json").read_text()) == summary["thresholds"]
    assert len(list(csv.DictReader(open(folder / "eval_test" / "per_image.csv")))) == n_test
    weights = folder / "model" / "weights_best.h5"
    stamp = weights.stat().st_mtime_ns
    assert stardist_fold(records, folder, TINY, progress=False) == summary
    assert weights.stat().st_mtime_ns == stamp  # same identity: reused


def test_without_the_peers_extra_stardist_is_one_line(records: Path, tmp_path: Path, monkeypatch) -> None:
    from tnbc_pipeline.errors import TnbcError
    from tnbc_pipeline.experiments import peers

    monkeypatch.setattr(peers, "stardist_available", lambda: False)
    with pytest.raises(TnbcError, match=r"--peer stardist needs the optional extra: pip install 'tnbc_pipeline\[peers\]'"):
        peers.peer_fold("stardist", records, tmp_path, TINY, progress=False)
    assert not (tmp_path / "peer_stardist").exists()  # nothing written
