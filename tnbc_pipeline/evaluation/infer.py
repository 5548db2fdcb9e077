"""The infer stage: any folder of images -> masks, probabilities and overlays (and metrics, given masks).

    OUT/masks/NAME.png           binary mask, values {0, 255}
    OUT/probabilities/NAME.png   nucleus probability x 255
    OUT/overlays/NAME.png        the image with each nucleus' outline drawn in green (no uint8 wrap-around)
    OUT/metrics.csv, OUT/comparison.png   with --masks DIR (masks matched by file stem)

Images of any size and count, in any format cv2 reads (PNG, JPEG, TIFF, BMP); alpha is dropped,
grey images are used as RGB. Large images are predicted in Gaussian-blended tiles. Post-processing
(small objects removed, nuclei separated) is eval's: see `tnbc_pipeline.evaluation.evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation.evaluate import RunModel, post_process
from tnbc_pipeline.evaluation.metrics import (MIN_AREA, instance_labels, instance_metrics, label_instances,
                                              pixel_metrics)
from tnbc_pipeline.io import MAX_PIXELS, atomic_write_bytes, encode_png, png_header, write_csv

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _decode(path: Path) -> np.ndarray:
    """Any image file -> cv2's array, with PNG structure/CRC checks and the pixel limit first."""
    data = path.read_bytes()
    if path.suffix.lower() == ".png":
        png_header(data, str(path))
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise TnbcError(f"{path}: unreadable image")
    if arr.dtype != np.uint8:
        raise TnbcError(f"{path}: {arr.dtype} pixels not supported (expected 8-bit)")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise TnbcError(f"{path}: {arr.shape[1]}x{arr.shape[0]} pixels (limit {MAX_PIXELS})")
    return arr


def read_image(path: Path) -> np.ndarray:
    """Any image file -> RGB uint8 (H, W, 3): alpha dropped, grey repeated; a one-line TnbcError otherwise."""
    arr = _decode(path)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.dstack([arr] * 3))
    return np.ascontiguousarray(arr[:, :, 2::-1])


def read_mask(path: Path) -> np.ndarray:
    """A truth mask in any format -> bool (H, W): value > 127 (first channel of a colour file)."""
    arr = _decode(path)
    return (arr if arr.ndim == 2 else arr[..., 0]) > 127


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 image with the outline of every labelled nucleus (int (H, W), 0 = background; a bool
    mask counts as labels) drawn in green on a copy; touching nuclei show the line between them."""
    from skimage.segmentation import find_boundaries

    out = np.ascontiguousarray(image.copy())
    out[find_boundaries(labels.astype(np.int32), connectivity=2, mode="inner")] = (0, 255, 0)
    return out


def infer(run_dir: Path, images: Path, out: Path, threshold: float | None = None, tta: bool = False,
          masks: Path | None = None, split_touching: bool = False, min_area: int = MIN_AREA,
          instances: str = "auto", progress: bool = True) -> list[dict[str, Any]]:
    """Predict every image in `images` into `out`; return metric rows when `masks` is given."""
    from tnbc_pipeline.evaluation.plots import image_grid

    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise TnbcError(f"{images}: not a folder")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise TnbcError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    run = RunModel(run_dir, tta=tta)
    threshold = run.threshold() if threshold is None else threshold
    mode = run.instances(split_touching, instances)
    for sub in ("masks", "probabilities", "overlays"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows, grid = [], []
    for path in tqdm(files, desc="infer", unit="image", disable=not progress):
        image = read_image(path)
        prob, interior = run.predict(image.astype(np.float32) / 255.0)
        mask, how = post_process(prob, interior, threshold, min_area, mode)
        labels = instance_labels(mask, **how)
        name = f"{path.stem}.png"
        atomic_write_bytes(out / "masks" / name, encode_png(np.where(mask, 255, 0).astype(np.uint8)))
        atomic_write_bytes(out / "probabilities" / name, encode_png(np.round(prob * 255).astype(np.uint8)))
        atomic_write_bytes(out / "overlays" / name, encode_png(overlay(image, labels)))
        if masks is not None:
            candidates = [p for p in Path(masks).glob(f"{path.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
            if not candidates:
                raise TnbcError(f"{masks}: no mask named {path.stem}.* for {path}")
            truth = read_mask(candidates[0])
            if truth.shape != mask.shape:
                raise TnbcError(f"{candidates[0]}: mask size {truth.shape} differs from its image {mask.shape}")
            m = {**pixel_metrics(truth, mask), **instance_metrics(label_instances(truth), labels)}  # labels: once
            rows.append({"image": path.name, **{k: round(float(v), 5) for k, v in m.items()}})
            if len(grid) < 6:
                grid.append([image, truth, mask])
    if rows:
        write_csv(out / "metrics.csv", rows)
        image_grid(grid, ["image", "truth", "prediction"], out / "comparison.png",
                   row_labels=[r["image"] for r in rows[: len(grid)]])
    log.info("%d image(s) -> %s (threshold %.2f)", len(files), out, threshold)
    return rows
