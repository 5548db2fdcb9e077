"""The user's own data (`--layout folders`) and the old ImageMask layout: pairing, groups, instance-label
masks kept exactly from the raw folder through the dataset and the records to the scored truth."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from skimage.segmentation import relabel_sequential

from tests.conftest import SIZE, one_error
from tnbc_pipeline.cli import main
from tnbc_pipeline.config import AugmentConfig, DatasetConfig, RecordsConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.layouts import FolderRelease, detect, mask_array, open_release, safe_name
from tnbc_pipeline.data.synth import PATIENT_COUNTS, synth_labelled, write_folders
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation.metrics import truth_labels
from tnbc_pipeline.inference.postprocess import label_instances
from tnbc_pipeline.io import encode_png

FEW = DatasetConfig(augment=AugmentConfig(alpha=[], sigma=[], rotations=[90.0, 45.0], distort=[0.02], shrink=[],
                                          flips=True))


@pytest.fixture(scope="module")
def own_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tnbc synth --layout folders`: 50 images of 11 patients, odd tiles with 16-bit instance labels."""
    return write_folders(tmp_path_factory.mktemp("own") / "data", seed=0, size=SIZE)


@pytest.fixture
def own(own_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(own_root, tmp_path / "data"))


def _labels_of(pp: str, k: int) -> np.ndarray:
    """The synthetic instance labels of patientPP-tileK, renumbered 1..n as the dataset stores them."""
    stain = np.random.default_rng([0, int(pp)]).uniform(0.9, 1.08, 3).astype(np.float32)
    labels = synth_labelled(np.random.default_rng([0, int(pp), k]), SIZE, stain)[1]
    return relabel_sequential(labels)[0]


def test_mask_array_known_answers() -> None:
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    assert np.array_equal(mask_array(binary, "m", None), binary)
    assert np.array_equal(mask_array(binary // 255, "m", None), binary)  # {0, 1} is binary too
    labels = mask_array(np.array([[0, 9, 9], [5, 5, 0]], np.int32), "m", None)
    assert labels.dtype == np.uint16 and np.array_equal(labels, [[0, 2, 2], [1, 1, 0]])  # renumbered by value
    grey = np.array([[0, 100, 200]], np.uint8)
    assert np.array_equal(mask_array(grey, "m", 127), [[0, 0, 255]])
    assert np.array_equal(mask_array(np.dstack([binary] * 3), "m", None), binary)
    for bad, why in ((np.dstack([binary, binary * 0, binary]), "differing colour channels"),
                     (np.array([[0.5, 0.0]]), "float64"), (np.array([[-1, 2, 3]]), "negative")):
        with pytest.raises(TnbcError, match=why):
            mask_array(bad, "m.png", None)


def test_safe_name_makes_any_stem_a_key() -> None:
    assert safe_name("Slide A__01 (x)") == "Slide-A_01-x"
    assert safe_name("patient01-tile3") == "patient01-tile3" and safe_name("01_1") == "01_1"
    assert safe_name("..__..") == ""


def test_folders_layout_reads_pairs_groups_and_instance_labels(own: Path) -> None:
    release = open_release(own)
    assert isinstance(release, FolderRelease) and detect(own) == "folders"
    assert release.patients == {f"patient{pp}": n for pp, n in PATIENT_COUNTS.items()}
    case = next(c for c in release.cases if c.key == "patient04-tile3")
    assert (case.patient, case.image, case.mask) == ("patient04", "images/patient04-tile3.png",
                                                    "masks/patient04-tile3.png")
    image, mask, _, _ = release.load(case)
    expected = _labels_of("04", 3)
    assert image.shape == (SIZE, SIZE, 3) and mask.dtype == np.uint16 and np.array_equal(mask, expected)
    # Touching nuclei share an edge: components merge some of them, the labels keep every one.
    assert label_instances(mask > 0).max() < mask.max() == len(np.unique(expected)) - 1
    jpeg = next(c for c in release.cases if c.key == "patient03-tile2")
    image, mask, _, _ = release.load(jpeg)
    assert jpeg.image.endswith(".jpg") and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}


def test_own_data_labels_survive_dataset_records_and_scoring(own: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.data.pipeline import make_dataset
    from tnbc_pipeline.data.records import build_records
    from tnbc_pipeline.evaluation.tune import examples

    out = tmp_path / "ds"
    build_dataset(own, out, FEW, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    split_of = {p: s for s, ids in manifest["splits"].items() for p in ids}
    assert set(split_of) == {f"patient{pp}" for pp in PATIENT_COUNTS}
    for it in manifest["items"]:  # every item of one group lands in its group's split
        assert split_of[it["patient"]] == it["split"] and it["source"].startswith(it["patient"] + "-")
    assert split_of["patient04"] == "train"  # the seeded split; its variants are rendered
    rotated = cv2.imread(str(out / "train" / "masks" / "patient04-tile3__rot90.png"), cv2.IMREAD_UNCHANGED)
    assert rotated.dtype == np.uint16 and np.array_equal(rotated, np.rot90(_labels_of("04", 3)))  # exact turn
    warped = cv2.imread(str(out / "train" / "masks" / "patient04-tile3__rot45.png"), cv2.IMREAD_UNCHANGED)
    # nearest sampling: label values of the original only, never blends of two
    assert warped.dtype == np.uint16 and set(np.unique(warped)) <= set(np.unique(rotated)) and warped.max() > 1
    records = build_records(out, None, RecordsConfig(), progress=False).out
    test_keys = [it["source"] for it in manifest["items"] if it["split"] == "test"]
    seen = 0
    for _, truth, key, patient, op in examples(records, "test", False):
        pp, k = patient[-2:], int(key.split("__")[0].rsplit("tile", 1)[1])
        expected = _labels_of(pp, k)
        if k % 2:  # stored as instance labels: the scored truth is exactly them
            assert np.array_equal(truth, expected)
        else:  # stored binary with one-pixel lines: the truth is its components, as for TNBC
            assert np.array_equal(truth > 0, cv2.imread(str(out / "test" / "masks" / f"{key}.png"), 0) > 0)
        seen += 1
    assert seen == len(test_keys) > 0
    x, y = next(iter(make_dataset(records, "train", training=True, batch_size=2, patch=32, interior=1)))
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32, 2) and set(np.unique(y.numpy())) <= {0.0, 1.0}


def test_groups_csv_rules(own: Path, caplog: pytest.LogCaptureFixture) -> None:
    (own / "groups.csv").write_text("image,group\npatient01-tile1.png,A\n")
    with pytest.raises(TnbcError, match=r"groups.csv: no group for image patient01-tile2 \(49 image"):
        open_release(own)
    (own / "groups.csv").write_text("file,patient\n")
    with pytest.raises(TnbcError, match="first row must be the header 'image,group'"):
        open_release(own)
    (own / "groups.csv").unlink()
    with caplog.at_level(logging.WARNING):
        release = open_release(own)
    assert len(release.patients) == 50 and "may leak across splits" in caplog.text


def test_folders_layout_bad_input_is_one_line(own: Path) -> None:
    (own / "masks" / "patient01-tile1.png").unlink()
    with pytest.raises(TnbcError, match=r"images/patient01-tile1.png: no matching mask masks/patient01-tile1"):
        open_release(own)
    cv2.imwrite(str(own / "masks" / "patient01-tile1.jpg"), np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(TnbcError, match="patient01-tile1.jpg: a JPEG mask is lossy"):
        open_release(own)
    (own / "masks" / "patient01-tile1.jpg").unlink()
    (own / "masks" / "patient01-tile1.png").write_bytes(encode_png(np.zeros((SIZE, SIZE + 1), np.uint8)))
    release = open_release(own)
    with pytest.raises(TnbcError, match=f"mask is {SIZE + 1}x{SIZE} but its image is {SIZE}x{SIZE}"):
        release.load(next(c for c in release.cases if c.key == "patient01-tile1"))
    shutil.copy(own / "images" / "patient01-tile2.png", own / "images" / "patient01 tile2.png")
    shutil.copy(own / "masks" / "patient01-tile2.png", own / "masks" / "patient01 tile2.png")
    with pytest.raises(TnbcError, match="becomes the same key 'patient01-tile2'"):
        open_release(own)


def _imagemask(root: Path) -> Path:
    """The old ImageMask layout: JPEG pairs, augmented copies of one source in train and test."""
    image, labels = synth_labelled(np.random.default_rng(1), SIZE)
    grey = cv2.GaussianBlur(np.where(labels > 0, 240, 0).astype(np.uint8), (3, 3), 0)  # grey JPEG edges
    for split, stem in (("train", "1001"), ("train", "1002"), ("valid", "hflipped_1001"), ("test", "1003"),
                        ("test", "deformed_alpha_1300_sigmoid_8_1002")):
        for kind, arr in (("images", image[:, :, ::-1]), ("masks", grey)):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / split / kind / f"{stem}.jpg"), arr)
    return root


def test_imagemask_layout_regroups_copies_and_thresholds_grey_masks(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    root = _imagemask(tmp_path / "old")
    with caplog.at_level(logging.WARNING):
        release = open_release(root)
    assert detect(root) == "imagemask" and release.patients == {"1001": 2, "1002": 2, "1003": 1}
    assert "split is ignored" in caplog.text and "nucleus = value > 127" in caplog.text
    _, mask, _, _ = release.load(next(c for c in release.cases if c.key == "hflipped_1001"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}


def test_cli_synth_folders_then_dataset(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["synth", "--layout", "folders", "--size", "64", "--out", str(tmp_path / "mine")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["groups.csv", "identity.json", "images", "masks"]
    res = runner.invoke(main, ["-q", "dataset", "--raw", str(tmp_path / "mine"), "--layout", "folders", "--out",
                               str(tmp_path / "ds"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["config"]["layout"] == "folders"
    res = runner.invoke(main, ["-q", "dataset", "--raw", str(tmp_path / "mine"), "--layout", "imagemask", "--out",
                               str(tmp_path / "ds2")])
    one_error(res, str(tmp_path / "mine"), "no image/mask pairs in {train,valid,test}")
    assert not (tmp_path / "ds2").exists()
