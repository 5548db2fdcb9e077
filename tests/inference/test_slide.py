"""Whole-slide inference on small pyramidal TIFFs made with tifffile: tiles, tissue, seams (each nucleus
once, none cut), rescaling to the model's pixel size, slide coordinates, and bad input in one line."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tnbc_pipeline.config import PostProcess
from tnbc_pipeline.data.synth import synth_labelled
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.inference import slide as slide_mod
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.inference.slide import Tile, owned, plan_tiles, tissue_mask

pytest.importorskip("tiffslide", reason="the optional extra 'slide' is not installed")
tifffile = pytest.importorskip("tifffile")

POST = PostProcess(threshold=0.5, min_area=0, instances="components")


class PixelRun:
    """A stand-in for a trained run whose prediction is a pure function of each pixel (dark = nucleus),
    so that any tiling of an image gives the same nuclei as the whole image: seams are all that differ."""

    channels = ("mask",)
    model_sha256 = "0" * 64

    def __init__(self, run_dir: Path, tta: bool = False) -> None:
        pass

    @staticmethod
    def predict(image: np.ndarray) -> np.ndarray:
        return (image.mean(axis=-1, keepdims=True) < 0.55).astype(np.float32)

    @staticmethod
    def resolve(overrides: dict) -> tuple[PostProcess, str]:
        return POST, "test"


def _write_slide(path: Path, image: np.ndarray, mpp: float | None, levels: int = 2) -> Path:
    opts = dict(tile=(64, 64), photometric="rgb", compression="zlib")
    res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, subifds=levels - 1, **opts, **res)
        for k in range(1, levels):
            f = 2**k
            sub = {} if mpp is None else {"resolution": (1e4 / mpp / f, 1e4 / mpp / f), "resolutionunit": "CENTIMETER"}
            tw.write(np.ascontiguousarray(image[::f, ::f]), subfiletype=1, **opts, **sub)
    return path


@pytest.fixture(scope="module")
def tissue_image() -> np.ndarray:
    """384 x 320 px: synthetic H&E on the left 256 columns, white glass on the right 64."""
    image, _ = synth_labelled(np.random.default_rng(3), 384)
    image = image[:, :320].copy()
    image[:, 256:] = 245
    return image


@pytest.fixture
def pixel_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import tnbc_pipeline.inference.predictor as predictor

    monkeypatch.setattr(predictor, "RunModel", PixelRun)
    monkeypatch.setattr(slide_mod, "TILE", 96)  # many seams on a small slide
    monkeypatch.setattr(slide_mod, "MARGIN", 32)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "nuclei.csv") as f:
        return list(csv.DictReader(f))


def test_plan_tiles_partitions_the_region() -> None:
    tiles = plan_tiles((10, 20, 250, 130), 96, 16)
    cover = np.zeros((200, 300), int)
    for t in tiles:
        x, y, w, h = t.core
        cover[y:y + h, x:x + w] += 1
        wx, wy, ww, wh = t.window
        assert wx == max(10, x - 16) and wy == max(20, y - 16) and wx + ww == min(260, x + w + 16)
    assert cover[20:150, 10:260].min() == cover.max() == 1 and cover.sum() == 250 * 130  # each px once
    assert [t.core for t in tiles[:3]] == [(10, 20, 96, 96), (106, 20, 96, 96), (202, 20, 58, 96)]


def test_owned_keeps_centred_nuclei_and_counts_cut_ones() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[10:14, 10:14] = 1  # centred in the core (window px 8..31)
    labels[2:5, 2:5] = 2  # centred in the margin: another tile's
    labels[20:26, 20:40] = 3  # centred in the core, touching the window's right edge inside the region: cut
    tile = Tile(core=(108, 208, 24, 24), window=(100, 200, 40, 40))
    kept, cut = owned(labels, tile, region=(0, 0, 1000, 1000))
    assert set(np.unique(kept)) == {0, 1} and cut == 1
    kept, cut = owned(labels, tile, region=(0, 0, 140, 1000))  # that edge is the region's: nothing cut
    assert set(np.unique(kept)) == {0, 1, 3} and cut == 0


def test_tissue_is_otsu_on_saturation(tissue_image: np.ndarray) -> None:
    mask = tissue_mask(tissue_image[::4, ::4])
    assert mask[:, :60].mean() > 0.95 and not mask[:, 66:].any()  # glass (with the 2-px dilation) is not
    assert tissue_mask(np.full((8, 8, 3), 250, np.uint8)).sum() == 0
    assert tissue_mask(np.full((8, 8, 3), (200, 80, 160), np.uint8)).all()


def test_slide_nuclei_equal_the_whole_image_once_each(tmp_path: Path, tissue_image: np.ndarray,
                                                      pixel_run: None) -> None:
    path = _write_slide(tmp_path / "s.tif", tissue_image, mpp=0.25)
    record = slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "out", progress=False)
    whole = segment(PixelRun.predict(tissue_image / 255.0), ("mask",), POST)
    from skimage.measure import regionprops

    expected = sorted((round(p.centroid[1] + 0.5, 2), round(p.centroid[0] + 0.5, 2)) for p in regionprops(whole))
    rows = _rows(tmp_path / "out")
    got = sorted((float(r["centroid_x"]), float(r["centroid_y"])) for r in rows)
    assert record["nuclei"] == len(rows) == len(expected) and got == expected  # every nucleus once, uncut
    assert record["tiles"] == 12 and record["tiles_without_tissue"] == 4 and record["dropped_cut"] == 0
    geo = json.loads((tmp_path / "out" / "geojson" / "s.geojson").read_text())
    assert len(geo["features"]) == len(rows)
    areas = sorted(int(r["area_px"]) for r in rows)
    assert areas == sorted(int(p.area) for p in regionprops(whole))
    ring = np.asarray(geo["features"][0]["geometry"]["coordinates"][0])
    cx, cy = float(rows[0]["centroid_x"]), float(rows[0]["centroid_y"])
    assert abs(ring[:, 0].mean() - cx) < 6 and abs(ring[:, 1].mean() - cy) < 6  # x, y not transposed
    assert json.loads((tmp_path / "out" / "slide.json").read_text())["nuclei"] == len(rows)


def test_region_level_and_pixel_size_rescale_back_to_slide_coordinates(tmp_path: Path, tissue_image: np.ndarray,
                                                                       pixel_run: None,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = _write_slide(tmp_path / "s.tif", tissue_image, mpp=0.125)  # 80x: twice the model's resolution
    with caplog.at_level(logging.WARNING):
        record = slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "out", region="0,0,256,384",
                                       progress=False)
    assert record["scale"] == 0.5 and "rescaled x0.50" in caplog.text
    full = _rows(tmp_path / "out")
    assert full and max(float(r["centroid_x"]) for r in full) < 256
    # The same slide read at level 1 (0.25 µm/px: the model's scale) lands on the same nuclei in level-0 px.
    record1 = slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "out1", region="0,0,256,384", level=1,
                                    progress=False)
    assert record1["scale"] == 1.0
    level1 = _rows(tmp_path / "out1")
    assert abs(len(level1) - len(full)) <= max(2, len(full) // 10)
    a = np.array([[float(r["centroid_x"]), float(r["centroid_y"])] for r in full])
    b = np.array([[float(r["centroid_x"]), float(r["centroid_y"])] for r in level1])
    nearest = np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1)).min(1)
    assert np.median(nearest) < 2.5  # level-1 px are 2 level-0 px: same places, not halved or transposed


def test_glass_is_skipped_and_bad_input_is_one_line(tmp_path: Path, tissue_image: np.ndarray,
                                                    pixel_run: None) -> None:
    path = _write_slide(tmp_path / "s.tif", tissue_image, mpp=0.25)
    record = slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "out", region="224,0,96,384",
                                   progress=False)
    assert record["tiles"] == 4 and record["tiles_without_tissue"] == 0  # 32 px of tissue in each core
    record = slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "glass", region="260,0,60,384",
                                   progress=False)
    assert record["tiles"] == 0 and record["tiles_without_tissue"] == 4 and record["nuclei"] == 0
    with pytest.raises(TnbcError, match=r"region 300,0,60,10 lies outside the slide \(320 x 384 px\)"):
        slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "bad", region="300,0,60,10", progress=False)
    (tmp_path / "not.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(TnbcError, match="not.tif: not a readable slide"):
        slide_mod.infer_slide(tmp_path / "run", tmp_path / "not.tif", tmp_path / "bad", progress=False)
    with pytest.raises(TnbcError, match="no level 5"):
        slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "bad", level=5, progress=False)
    with tifffile.TiffFile(path) as tf:  # damage one tile of level 0: its zlib stream no longer decodes
        offset, size = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]
    damaged = bytearray(path.read_bytes())
    damaged[offset:offset + size] = b"\xff" * size
    (tmp_path / "damaged.tif").write_bytes(bytes(damaged))
    with pytest.raises(TnbcError, match="damaged.tif: cannot read the tile at level 0"):
        slide_mod.infer_slide(tmp_path / "run", tmp_path / "damaged.tif", tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))  # nothing half-written
    before = (tmp_path / "out" / "nuclei.csv").read_bytes()
    with pytest.raises(TnbcError, match="region"):
        slide_mod.infer_slide(tmp_path / "run", path, tmp_path / "out", region="0,0,0,5", progress=False)
    assert (tmp_path / "out" / "nuclei.csv").read_bytes() == before  # the previous output is intact


def test_infer_takes_images_or_a_slide(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tests.conftest import one_error
    from tnbc_pipeline.cli import main

    runner = CliRunner()
    one_error(runner.invoke(main, ["infer", "--run-dir", str(tmp_path), "--out", str(tmp_path / "o")]),
              "exactly one of --images and --slide")
    one_error(runner.invoke(main, ["infer", "--run-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--images",
                                   str(tmp_path), "--region", "0,0,5,5"]), "--region and --level apply to --slide")
    assert not (tmp_path / "o").exists()
