"""Whole slides and large images: `tnbc infer --slide FILE` -> nuclei as GeoJSON + a table, in slide coordinates.

    slide (tiffslide: pyramidal TIFF, SVS, NDPI, ...; extra `slide`)
      -> tissue: Otsu's threshold on the HSV saturation of a <= 1024-px overview (H&E tissue is coloured,
         glass and background are grey or white), dilated a little so tissue borders are kept
      -> tiles: a grid of TILE x TILE cores (model-scale px) over the region, those without tissue skipped;
         each read with MARGIN px of context on every side, rescaled to the model's pixel size
      -> probabilities -> nuclei (the run's post-processing) -> each nucleus is kept by the one tile whose
         core holds its centroid, so it is reported once; one no wider than MARGIN lies wholly inside that
         tile's window, so none is cut at a seam (a larger one touching the window edge is dropped, counted)
      -> polygons + measurements scaled to level-0 slide pixels, streamed feature by feature to
         OUT/geojson/<stem>.geojson and row by row to OUT/nuclei.csv; OUT/slide.json says what was done.
Memory holds one tile window at a time, whatever the slide's size. Everything is written into a hidden
sibling folder and moved into place at the end: a bad slide or tile leaves nothing half-written.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from tnbc_pipeline import identity
from tnbc_pipeline.config import MASK_CHANNEL, to_dict
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.inference.objects import MEASUREMENTS, feature, measure, polygon, write_geojson
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.io import replace_dir, staging_dir, write_json

log = logging.getLogger(__name__)

MODEL_MPP = 0.25  # µm/px of the training data: TNBC was scanned at 40x (~0.25 µm/px, the usual 40x pixel)
TILE = 1024  # tile core side, model-scale px
MARGIN = 64  # context read around each core, model-scale px: larger than a nucleus (TNBC: <= ~40 px)
SAME_SCALE = 0.1  # a pixel-size ratio within 10% of 1 is not rescaled
OVERVIEW = 1024  # longest side of the tissue overview, px


@dataclass(frozen=True)
class Tile:
    """One tile: its core (owned area) and the window read around it, in read-level px (x, y, w, h)."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


def tissue_mask(overview: np.ndarray) -> np.ndarray:
    """RGB uint8 (h, w, 3) overview -> bool (h, w) tissue: saturation above Otsu's threshold, dilated by
    2 px. A flat overview (one colour) is all tissue when coloured (saturation > 20), else none."""
    from skimage.filters import threshold_otsu

    sat = cv2.cvtColor(np.ascontiguousarray(overview), cv2.COLOR_RGB2HSV)[..., 1]
    if int(sat.max()) - int(sat.min()) < 8:
        return np.full(sat.shape, bool(sat.mean() > 20))
    tissue = sat > threshold_otsu(sat)
    return cv2.dilate(tissue.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def plan_tiles(region: tuple[int, int, int, int], core: int, margin: int) -> list[Tile]:
    """Cores of side `core` tiling `region` (x, y, w, h) row by row (the last ones clipped to it), each
    with a window `margin` px larger on every side, clipped to the region."""
    x0, y0, w, h = region
    tiles = []
    for y in range(y0, y0 + h, core):
        for x in range(x0, x0 + w, core):
            cw, ch = min(core, x0 + w - x), min(core, y0 + h - y)
            wx, wy = max(x0, x - margin), max(y0, y - margin)
            wx1, wy1 = min(x0 + w, x + cw + margin), min(y0 + h, y + ch + margin)
            tiles.append(Tile((x, y, cw, ch), (wx, wy, wx1 - wx, wy1 - wy)))
    return tiles


def owned(labels: np.ndarray, tile: Tile, region: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
    """Window labels (h, w) -> (the labels of the nuclei this tile reports, others set to 0; how many
    centred in the core were dropped for touching a window edge that is not the region's edge)."""
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return labels, 0
    cy, cx = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2).T
    (x, y, cw, ch), (wx, wy, ww, wh) = tile.core, tile.window
    cx, cy = cx + wx + 0.5, cy + wy + 0.5  # pixel centres, read-level px
    inside = (cx >= x) & (cx < x + cw) & (cy >= y) & (cy < y + ch)
    rx, ry, rw, rh = region
    edges = []  # window edges inside the region: a nucleus touching one is cut
    if wx > rx:
        edges.append(labels[:, 0])
    if wy > ry:
        edges.append(labels[0, :])
    if wx + ww < rx + rw:
        edges.append(labels[:, -1])
    if wy + wh < ry + rh:
        edges.append(labels[-1, :])
    cut = np.isin(ids, np.concatenate(edges)) if edges else np.zeros(ids.shape, bool)
    keep = ids[inside & ~cut]
    return np.where(np.isin(labels, keep), labels, 0), int((inside & cut).sum())


def open_slide(path: Path) -> Any:
    """A tiffslide.TiffSlide, or one line: no such file, not a slide, or the extra not installed."""
    try:
        import tiffslide
    except ImportError:
        raise TnbcError("--slide needs the optional extra 'slide' (pip install 'tnbc_pipeline[slide]')") from None
    if not Path(path).is_file():
        raise TnbcError(f"{path}: no such file")
    try:
        return tiffslide.TiffSlide(str(path))
    except Exception as exc:  # tifffile / PIL raise many types on a file that is not a slide
        raise TnbcError(f"{path}: not a readable slide ({type(exc).__name__}: {str(exc)[:160]})") from exc


def slide_mpp(slide: Any, path: Path, given: float | None) -> float | None:
    """Level-0 µm/px: `given` (--mpp) over the slide's metadata; None when neither says."""
    if given is not None:
        return given
    value = slide.properties.get("tiffslide.mpp-x")
    try:
        mpp = float(value) if value is not None else None
    except (TypeError, ValueError):
        mpp = None
    return mpp if mpp and math.isfinite(mpp) and mpp > 0 else None


def _read(slide: Any, path: Path, level: int, window: tuple[int, int, int, int], down: float) -> np.ndarray:
    x, y, w, h = window
    try:
        arr = slide.read_region((round(x * down), round(y * down)), level, (w, h), as_array=True)
    except Exception as exc:
        raise TnbcError(f"{path}: cannot read the tile at level {level} x={x} y={y} w={w} h={h} "
                        f"({type(exc).__name__}: {str(exc)[:160]})") from exc
    return np.ascontiguousarray(np.asarray(arr)[..., :3], dtype=np.uint8)


def overview(slide: Any, path: Path, level: int) -> tuple[np.ndarray, float]:
    """RGB (h, w, 3) overview (longest side <= OVERVIEW) of the slide's smallest level, read in 2048-px
    blocks (bounded memory); and its px per px of `level`."""
    top = slide.level_count - 1
    ow, oh = slide.level_dimensions[top]
    f = max(1.0, max(ow, oh) / OVERVIEW)
    out = np.zeros((max(1, round(oh / f)), max(1, round(ow / f)), 3), np.uint8)
    down = slide.level_downsamples[top]
    for by in range(0, oh, 2048):
        for bx in range(0, ow, 2048):
            w, h = min(2048, ow - bx), min(2048, oh - by)
            block = _read(slide, path, top, (bx, by, w, h), down)
            tx, ty = round(bx / f), round(by / f)
            tw, th = max(1, min(out.shape[1] - tx, round(w / f))), max(1, min(out.shape[0] - ty, round(h / f)))
            if tw > 0 and th > 0 and tx < out.shape[1] and ty < out.shape[0]:
                out[ty:ty + th, tx:tx + tw] = cv2.resize(block, (tw, th), interpolation=cv2.INTER_AREA)
    return out, slide.level_downsamples[level] / (down * f)


def _nuclei(run: Any, post: Any, slide: Any, path: Path, tiles: list[Tile], level: int, scale: float,
            region: tuple[int, int, int, int], mpp_level: float | None, stats: dict[str, int],
            progress: bool) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(GeoJSON feature, nuclei.csv row) of every nucleus, tile by tile, in level-0 slide coordinates."""
    from scipy import ndimage

    down = slide.level_downsamples[level]
    count = 0
    for tile in tqdm(tiles, desc="slide", unit="tile", disable=not progress):
        image = _read(slide, path, level, tile.window, down)
        h, w = image.shape[:2]
        model_in = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)),
                                                          interpolation=cv2.INTER_LINEAR)
        probs = run.predict(model_in.astype(np.float32) / 255.0)
        labels = segment(probs, run.channels, post)
        prob = probs[..., MASK_CHANNEL]
        if scale != 1.0:  # back to read-level px: nearest for labels (exact ids), linear for probabilities
            labels = cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
            prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        labels, cut = owned(labels, tile, region)
        stats["cut"] += cut
        stats["pixels"] += w * h
        wx, wy = tile.window[:2]
        boxes = ndimage.find_objects(labels.astype(np.int32))
        for row in measure(labels, image, prob, mpp_level):
            box = boxes[row["id"] - 1]
            ring = [[round((px + wx) * down, 2), round((py + wy) * down, 2)]
                    for px, py in polygon(labels[box] == row["id"], (box[1].start, box[0].start))]
            count += 1
            row = {**row, "id": count, "centroid_x": round((row["centroid_x"] + wx) * down, 2),
                   "centroid_y": round((row["centroid_y"] + wy) * down, 2), "area_px": round(row["area_px"] * down**2),
                   "perimeter_px": round(row["perimeter_px"] * down, 2),
                   "equivalent_diameter_px": round(row["equivalent_diameter_px"] * down, 2)}
            yield feature(row, ring), row


def parse_region(text: str | None, size: tuple[int, int], path: Path) -> tuple[int, int, int, int]:
    """'x,y,w,h' (level-0 px) -> the region, checked to lie inside the slide; None -> the whole slide."""
    if text is None:
        return (0, 0, *size)
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise TnbcError(f"--region {text!r}: expected x,y,w,h (integers, level-0 px)") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > size[0] or y + h > size[1]:
        raise TnbcError(f"{path}: region {x},{y},{w},{h} lies outside the slide ({size[0]} x {size[1]} px)")
    return x, y, w, h


def infer_slide(run_dir: Path, slide_path: Path, out: Path, overrides: dict[str, Any] | None = None,
                tta: bool = False, region: str | None = None, level: int = 0, mpp: float | None = None,
                model_mpp: float = MODEL_MPP, progress: bool = True) -> dict[str, Any]:
    """Nuclei of a whole slide (or a level-0 `region` 'x,y,w,h' of it) read at `level`, into `out`
    (module docstring); return the record written to OUT/slide.json."""
    from tnbc_pipeline.inference.predictor import RunModel

    slide_path, out = Path(slide_path), Path(out)
    for name, value in (("--mpp", mpp), ("--model-mpp", model_mpp)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise TnbcError(f"{name} must be a finite number > 0, got {value}")
    slide = open_slide(slide_path)
    if not 0 <= level < slide.level_count:
        raise TnbcError(f"{slide_path}: no level {level} (the slide has levels 0..{slide.level_count - 1})")
    identity.claim(out, "infer")
    box0 = parse_region(region, slide.dimensions, slide_path)
    down = slide.level_downsamples[level]
    box = (math.floor(box0[0] / down), math.floor(box0[1] / down), max(1, round(box0[2] / down)),
           max(1, round(box0[3] / down)))
    mpp0 = slide_mpp(slide, slide_path, mpp)
    scale = 1.0
    if mpp0 is None:
        log.warning("%s: pixel size unknown (no metadata; give --mpp); assuming the model's %.3f µm/px",
                    slide_path, model_mpp)
    elif abs(mpp0 * down / model_mpp - 1) > SAME_SCALE:
        scale = mpp0 * down / model_mpp
        log.warning("%s: %.3f µm/px at level %d vs the model's %.3f: tiles rescaled x%.2f to the model's scale; "
                    "results in slide coordinates", slide_path, mpp0 * down, level, model_mpp, scale)
    run = RunModel(run_dir, tta=tta)
    post, source = run.resolve(overrides or {})
    tissue, per_px = overview(slide, slide_path, level)
    mask = tissue_mask(tissue)
    grid = plan_tiles(box, max(1, round(TILE / scale)), math.ceil(MARGIN / scale))
    tiles = [t for t in grid if _has_tissue(mask, t.core, per_px)]
    stat = slide_path.stat()
    made = identity.Identity("infer", {"postprocess": to_dict(post), "tta": tta, "region": list(box0), "level": level,
                                       "mpp": mpp0, "model_mpp": model_mpp, "tile": TILE, "margin": MARGIN},
                             {"model": run.model_sha256,
                              "slide": identity.digest_of([slide_path.name, stat.st_size, stat.st_mtime_ns])})
    staging = staging_dir(out)
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "geojson").mkdir(parents=True)
    stats = {"cut": 0, "pixels": 0}
    start = time.perf_counter()
    try:
        with open(staging / "geojson" / f"{slide_path.stem}.geojson", "w") as gj, \
                open(staging / "nuclei.csv", "w", newline="") as table:
            writer = csv.DictWriter(table, fieldnames=["image", "id", *MEASUREMENTS])
            writer.writeheader()

            def rows() -> Iterator[dict[str, Any]]:
                for feat, row in _nuclei(run, post, slide, slide_path, tiles, level, scale, box,
                                            mpp0 * down if mpp0 else None, stats, progress):
                    writer.writerow({"image": slide_path.name, **row})
                    yield feat

            count = write_geojson(gj, rows())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written: the previous output stays
        raise
    seconds = time.perf_counter() - start
    record = {"slide": str(slide_path), "level": level, "region": list(box0), "mpp": mpp0, "model_mpp": model_mpp,
              "scale": round(scale, 4), "postprocess": to_dict(post), "source": source, "tta": tta,
              "tiles": len(tiles), "tiles_without_tissue": len(grid) - len(tiles), "nuclei": count, "dropped_cut": stats["cut"], "seconds": round(seconds, 2),
              "megapixels_per_s": round(stats["pixels"] / 1e6 / max(seconds, 1e-9), 3),
              "model_sha256": run.model_sha256}
    write_json(staging / "slide.json", record)
    identity.write(staging, made)
    replace_dir(out, staging, keep=lambda name: False)
    log.info("%s: %d nuclei in %d tile(s) -> %s", slide_path, count, len(tiles), out)
    return record


def _has_tissue(mask: np.ndarray, core: tuple[int, int, int, int], per_px: float) -> bool:
    """Whether the overview `mask` (per_px overview px per read-level px) has tissue under `core`."""
    x, y, w, h = core
    x0, y0 = int(x * per_px), int(y * per_px)
    x1, y1 = max(x0 + 1, math.ceil((x + w) * per_px)), max(y0 + 1, math.ceil((y + h) * per_px))
    return bool(mask[y0:y1, x0:x1].any())
