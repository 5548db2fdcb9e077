"""Nuclei as objects: instance labels -> polygons (GeoJSON for QuPath) and per-nucleus measurements.

Coordinates are pixels of the input image, x right, y down, origin at the top-left corner of the top-left
pixel: pixel (column c, row r) covers [c, c + 1) x [r, r + 1), as QuPath places it. A nucleus' polygon is
OpenCV's outer contour of its label through the centres of its boundary pixels (c + 0.5, r + 0.5),
closed, holes dropped, counter-clockwise by the shoelace sign of (x, y); filling the polygon again
(`rasterise`) gives back the label's pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from tnbc_pipeline.errors import TnbcError

MEASUREMENTS = ("centroid_x", "centroid_y", "area_px", "area_um2", "perimeter_px", "equivalent_diameter_px",
                "eccentricity", "solidity", "mean_probability", "mean_hematoxylin_od")
CLASSIFICATION = {"name": "Nucleus", "color": [0, 200, 0]}


def label_image(labels: np.ndarray) -> np.ndarray:
    """int labels (H, W) -> uint16, the format of OUT/labels/NAME.png (refused above 65,535 nuclei)."""
    top = int(labels.max(initial=0))
    if top > np.iinfo(np.uint16).max:
        raise TnbcError(f"{top} nuclei in one image: more than a 16-bit label image holds")
    return labels.astype(np.uint16)


def polygon(region: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """bool (h, w) mask of one nucleus -> its closed, counter-clockwise outer ring [[x, y], ...] in image
    pixels (`offset`: (x, y) of the mask's top-left pixel in the image). The largest outer contour when
    the region has several parts; holes are dropped."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    ring = max(contours, key=lambda c: (len(c) > 2, cv2.contourArea(c), len(c)))[:, 0, :].astype(np.float64)
    if len(ring) < 3 or cv2.contourArea(ring.astype(np.float32)) == 0:  # a 1-px line or dot: its pixels' box
        ys, xs = np.nonzero(region)
        x0, y0, x1, y1 = xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5
        ring = np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]])
    ring = ring + np.array(offset, np.float64) + 0.5  # pixel centres
    x, y = ring[:, 0], ring[:, 1]
    if np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) < 0:  # shoelace: clockwise -> reverse
        ring = ring[::-1]
    points = ring.tolist()
    return points + [points[0]]


def rasterise(ring: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """`polygon`'s inverse: bool (H, W) of the pixels whose centres the ring encloses or touches."""
    out = np.zeros(shape, np.uint8)
    pts = np.round(np.asarray(ring[:-1]) - 0.5).astype(np.int32)
    cv2.fillPoly(out, [pts], 1)
    return out.astype(bool)


def measure(labels: np.ndarray, image: np.ndarray, probability: np.ndarray,
            mpp: float | None = None) -> list[dict[str, Any]]:
    """Per-nucleus measurements of int labels (H, W) over an RGB uint8 image (H, W, 3) and the mask
    probability float32 (H, W): one dict per label, in label order (scikit-image regionprops_table)."""
    from skimage.color import rgb2hed
    from skimage.measure import regionprops_table

    if not labels.any():
        return []
    hematoxylin = rgb2hed(image)[..., 0].astype(np.float32)
    table = regionprops_table(labels.astype(np.int32), np.dstack([probability.astype(np.float32), hematoxylin]),
                              properties=("label", "centroid", "area", "perimeter", "equivalent_diameter_area",
                                          "eccentricity", "solidity", "intensity_mean"))
    rows = []
    for i, label in enumerate(table["label"]):
        area = float(table["area"][i])
        rows.append({"id": int(label), "centroid_x": round(float(table["centroid-1"][i]) + 0.5, 2),
                     "centroid_y": round(float(table["centroid-0"][i]) + 0.5, 2), "area_px": int(area),
                     "area_um2": round(area * mpp * mpp, 3) if mpp else "",
                     "perimeter_px": round(float(table["perimeter"][i]), 2),
                     "equivalent_diameter_px": round(float(table["equivalent_diameter_area"][i]), 2),
                     "eccentricity": round(float(table["eccentricity"][i]), 4),
                     "solidity": round(float(table["solidity"][i]), 4),
                     "mean_probability": round(float(table["intensity_mean-0"][i]), 4),
                     "mean_hematoxylin_od": round(float(table["intensity_mean-1"][i]), 5)})
    return rows


def features(labels: np.ndarray, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One GeoJSON Feature per measured nucleus: its polygon, objectType 'detection', the classification
    and its measurements (as QuPath's 'Import objects' reads them)."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels.astype(np.int32))
    for row in rows:
        box = boxes[row["id"] - 1]
        yield feature(row, polygon(labels[box] == row["id"], (box[1].start, box[0].start)))


def feature(row: dict[str, Any], ring: list[list[float]]) -> dict[str, Any]:
    """The GeoJSON Feature of one nucleus: its measurement row (with its id) and its polygon ring."""
    return {"type": "Feature", "id": f"nucleus-{row['id']}", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection", "classification": CLASSIFICATION,
                           "measurements": {k: row[k] for k in MEASUREMENTS if row[k] != ""}}}


def write_geojson(f: IO[str], feats: Iterator[dict[str, Any]]) -> int:
    """Stream a FeatureCollection to `f`, feature by feature; return how many were written."""
    f.write('{"type": "FeatureCollection", "features": [')
    count = 0
    for feat in feats:
        f.write(("," if count else "") + "\n" + json.dumps(feat, separators=(",", ":")))
        count += 1
    f.write("\n]}\n")
    return count


def save_objects(out: Path, name: str, labels: np.ndarray, image: np.ndarray, probability: np.ndarray,
                 mpp: float | None = None) -> list[dict[str, Any]]:
    """OUT/labels/NAME.png and OUT/geojson/NAME.geojson for one image (each written aside, then renamed);
    return its measurement rows (for OUT/nuclei.csv), each with the image's name."""
    import os

    from tnbc_pipeline.io import atomic_write_bytes, encode_png

    stem = Path(name).stem
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "geojson").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "labels" / f"{stem}.png", encode_png(label_image(labels)))
    rows = measure(labels, image, probability, mpp)
    path = out / "geojson" / f"{stem}.geojson"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        write_geojson(f, features(labels, rows))
    os.replace(tmp, path)
    return [{"image": name, **row} for row in rows]
