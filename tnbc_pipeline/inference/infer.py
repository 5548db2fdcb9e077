"""The infer stage: any folder of images -> masks, probabilities and overlays.

    OUT/masks/NAME.png           binary mask, values {0, 255}
    OUT/probabilities/NAME.png   nucleus probability x 255
    OUT/overlays/NAME.png        the image with each nucleus' outline drawn in green (no uint8 wrap-around)
    OUT/labels/NAME.png          uint16 instance labels (0 = background, 1..n): exactly the nuclei scored
    OUT/geojson/NAME.geojson     one Polygon feature per nucleus, for QuPath's "Import objects" (objects.py)
    OUT/nuclei.csv               one row per nucleus: image, id, centroid, area, perimeter, shape, intensities
    OUT/postprocess.json         the post-processing used and where it came from (saved choice, defaults, flags)
    OUT/identity.json            what made the folder: the model's sha256, tta, the post-processing, the images

Images of any size and count, in any format cv2 reads (PNG, JPEG, TIFF, BMP); alpha is dropped,
grey images are used as RGB. Large images are predicted in Gaussian-blended tiles. Post-processing is
the run's saved choice (RUN/postprocess.json, see `tnbc eval`), fields overridden by flags.

Scoring against truth masks is evaluation's business: a caller passes `on_image`, called once per image
with (path, RGB image, int32 labels), and the evaluation wing's scorer collects metrics from it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from tnbc_pipeline import identity
from tnbc_pipeline.config import MASK_CHANNEL, to_dict
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.inference.objects import MEASUREMENTS, save_objects
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.inference.predictor import RunModel
from tnbc_pipeline.io import (MAX_PIXELS, atomic_write_bytes, encode_png, png_header, read_regular, sha256_bytes,
                              write_csv, write_json)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
OnImage = Callable[[Path, np.ndarray, np.ndarray], None]


def _decode(path: Path, data: bytes | None = None) -> np.ndarray:
    """Any image file (or its bytes, already read) -> cv2's array, with PNG structure/CRC checks and the
    pixel limit first."""
    data = read_regular(path) if data is None else data
    if not data:
        raise TnbcError(f"{path}: empty file")
    if path.suffix.lower() == ".png":
        png_header(data, str(path))
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise TnbcError(f"{path}: unreadable image ({str(exc).strip().splitlines()[-1][:200]})") from None
    if arr is None or arr.size == 0:
        raise TnbcError(f"{path}: unreadable image")
    if arr.dtype != np.uint8:
        raise TnbcError(f"{path}: {arr.dtype} pixels not supported (expected 8-bit)")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise TnbcError(f"{path}: {arr.shape[1]}x{arr.shape[0]} pixels (limit {MAX_PIXELS})")
    return arr


def read_image(path: Path, data: bytes | None = None) -> np.ndarray:
    """Any image file (or its bytes) -> RGB uint8 (H, W, 3): alpha dropped, grey repeated; a one-line
    TnbcError otherwise."""
    arr = _decode(path, data)
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


def image_files(images: Path) -> list[Path]:
    """The images of a folder (by suffix, hidden files skipped), sorted by name."""
    if not images.is_dir():
        raise TnbcError(f"{images}: not a folder")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise TnbcError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, Path] = {}
    for path in files:  # outputs are named by stem: s.png and s.jpg would write one file
        other = seen.setdefault(output_name(path).lower(), path)
        if other != path:
            raise TnbcError(f"{path}: would write the same outputs as {other.name} ({output_name(path)}); "
                            "rename one of them")
    return files


def output_name(path: Path) -> str:
    """The file name of an input image's outputs (masks/, probabilities/, overlays/)."""
    return f"{path.stem}.png"


def infer(run_dir: Path, images: Path, out: Path, overrides: dict[str, Any] | None = None, tta: bool = False,
          on_image: OnImage | None = None, progress: bool = True, mpp: float | None = None) -> dict[str, Any]:
    """Predict every image in `images` into `out` with the run's post-processing (`overrides`: fields of
    PostProcess replaced by the caller; `mpp`: microns per pixel, for areas in um^2); return the
    post-processing record written to OUT/postprocess.json, with the nucleus count."""
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise TnbcError(f"--mpp must be a finite number > 0, got {mpp}")
    images, out = Path(images), Path(out)
    files = image_files(images)
    identity.claim(out, "infer")
    run = RunModel(run_dir, tta=tta)
    post, source = run.resolve(overrides or {})
    made = identity.Identity("infer", {"postprocess": to_dict(post), "tta": tta, "mpp": mpp},
                             {"model": run.model_sha256})
    out.mkdir(parents=True, exist_ok=True)
    identity.write(out, made)  # the marker first: an interrupted run leaves a folder infer recognises
    for sub in ("masks", "probabilities", "overlays"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    hashes, nuclei = {}, []
    for path in tqdm(files, desc="infer", unit="image", disable=not progress):
        data = read_regular(path)  # read once: hashed for the identity, decoded for the model
        hashes[path.name] = sha256_bytes(data)
        image = read_image(path, data)
        probs = run.predict(image.astype(np.float32) / 255.0)
        labels = segment(probs, run.channels, post)
        name = output_name(path)
        atomic_write_bytes(out / "masks" / name, encode_png(np.where(labels > 0, 255, 0).astype(np.uint8)))
        prob = probs[..., MASK_CHANNEL]
        atomic_write_bytes(out / "probabilities" / name, encode_png(np.round(prob * 255).astype(np.uint8)))
        atomic_write_bytes(out / "overlays" / name, encode_png(overlay(image, labels)))
        nuclei += save_objects(out, path.name, labels, image, prob, mpp)
        if on_image is not None:
            on_image(path, image, labels)
    write_csv(out / "nuclei.csv", nuclei, fields=["image", "id", *MEASUREMENTS])
    record = {"postprocess": to_dict(post), "source": source, "model_sha256": run.model_sha256, "tta": tta,
              "mpp": mpp, "nuclei": len(nuclei)}
    write_json(out / "postprocess.json", record)
    identity.write(out, identity.Identity("infer", made.settings, {**made.inputs, "images": identity.digest_of(hashes)}))
    log.info("%d image(s) -> %s (threshold %.2f, nuclei by %s)", len(files), out, post.threshold, post.instances)
    return record
