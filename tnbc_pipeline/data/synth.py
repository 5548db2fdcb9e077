"""A synthetic TNBC release in the exact layout of the real one, for tests and the `make all` demo.

`DIR/TNBC_NucleiSegmentation/Slide_PP/PP_K.png` (RGBA, except 09_2..09_4 which are RGB as in the real
release) and `GT_PP/PP_K.png` (grey {0,255}); 11 patients with the real image counts. Images look like
H&E: pink stroma with pale gaps, purple textured nuclei, some touching. As in the real ground truth,
touching nuclei are separated in the mask by a one-pixel background line.

`write_folders` writes the same images as the user's own data would come (`--layout folders`):
`DIR/images/patientPP-tileK.png` (patient 03's as JPEG), `DIR/masks/patientPP-tileK.png` -- 16-bit
instance labels (touching nuclei share an edge, no gap) for odd K, binary {0, 255} with the release's
one-pixel lines for even K -- and `DIR/groups.csv` naming each image's patient.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from tnbc_pipeline import identity
from tnbc_pipeline.io import atomic_write_bytes, encode_png

log = logging.getLogger(__name__)

PATIENT_COUNTS = {"01": 7, "02": 3, "03": 5, "04": 8, "05": 4, "06": 3, "07": 3, "08": 4, "09": 6, "10": 4, "11": 3}
RGB_KEYS = frozenset({"09_2", "09_3", "09_4"})  # stored without alpha in the real release
RELEASE_DIR = "TNBC_NucleiSegmentation"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field, float32 (H, W)."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return (field - field.mean()) / (field.std() + 1e-6)


def _nuclei_labels(rng: np.random.Generator, size: int) -> np.ndarray:
    """int32 (H, W) label image of ellipses, half of them in clusters so that some touch."""
    scale = size / 512
    count = int(rng.integers(110, 200) * scale**2) + 3
    labels = np.zeros((size, size), np.int32)
    centres = rng.uniform(0, size, (max(2, count // 12), 2))
    for i in range(1, count + 1):
        if rng.random() < 0.5:  # clustered: near a cluster centre, so neighbours touch or overlap
            cx, cy = centres[rng.integers(len(centres))] + rng.normal(0, 14 * scale, 2)
        else:
            cx, cy = rng.uniform(0, size, 2)
        axes = (max(2, int(rng.uniform(6, 13) * scale)), max(2, int(rng.uniform(4, 9) * scale)))
        cv2.ellipse(labels, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, i, -1)
    return labels


def synth_case(rng: np.random.Generator, size: int = 512, stain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (RGB uint8 (size, size, 3), mask uint8 (size, size) in {0,255})."""
    image, labels = synth_labelled(rng, size, stain)
    return image, binary_mask(labels)


def binary_mask(labels: np.ndarray) -> np.ndarray:
    """int labels (H, W) -> uint8 {0, 255} with a one-pixel background line wherever two nuclei touch,
    as in the real annotations."""
    touching = ndimage.grey_dilation(labels, size=3) > labels
    return np.where((labels > 0) & ~touching, 255, 0).astype(np.uint8)


def synth_labelled(rng: np.random.Generator, size: int = 512,
                   stain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (RGB uint8 (size, size, 3), instance labels int32 (size, size); touching nuclei share an edge)."""
    stain = np.ones(3, np.float32) if stain is None else stain
    shape = (size, size)
    labels = _nuclei_labels(rng, size)

    low = _smooth_noise(rng, shape, size / 24)
    fibres = _smooth_noise(rng, shape, 1.5)
    stroma = np.array([236, 178, 206], np.float32) * stain
    img = stroma[None, None] * (1 + 0.06 * low[..., None] + 0.04 * fibres[..., None])
    gaps = np.clip((_smooth_noise(rng, shape, size / 16) - 1.2) * 2.0, 0, 1)[..., None]  # pale lumen/fat
    img = img * (1 - gaps) + np.array([246, 238, 244], np.float32) * gaps

    chromatin = _smooth_noise(rng, shape, 1.2)[..., None]
    tone = rng.uniform(0.8, 1.15, labels.max() + 1).astype(np.float32)[labels][..., None]
    nucleus = np.array([92, 52, 140], np.float32) * stain * tone * (1 + 0.12 * chromatin)
    alpha = cv2.GaussianBlur((labels > 0).astype(np.float32), (0, 0), 0.8)[..., None]
    img = img * (1 - alpha) + nucleus * alpha + rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def write_release(out: Path | str, seed: int = 0, size: int = 512) -> Path:
    """Write the synthetic release under `out`; return the `TNBC_NucleiSegmentation` folder."""
    root = Path(out) / RELEASE_DIR
    identity.claim(root, "synth")  # never over a real release or the user's files
    root.mkdir(parents=True, exist_ok=True)
    identity.write(root, identity.Identity("synth", {"seed": seed, "size": size}))
    for pp, count in PATIENT_COUNTS.items():
        # A per-patient stain tint: images of one patient resemble each other more than others'.
        stain = np.random.default_rng([seed, int(pp)]).uniform(0.9, 1.08, 3).astype(np.float32)
        (root / f"Slide_{pp}").mkdir(parents=True, exist_ok=True)
        (root / f"GT_{pp}").mkdir(parents=True, exist_ok=True)
        for k in range(1, count + 1):
            key = f"{pp}_{k}"
            image, mask = synth_case(np.random.default_rng([seed, int(pp), k]), size, stain)
            if key not in RGB_KEYS:
                image = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
            atomic_write_bytes(root / f"Slide_{pp}" / f"{key}.png", _encode_any(image))
            atomic_write_bytes(root / f"GT_{pp}" / f"{key}.png", encode_png(mask))
    log.info("synthetic release (seed %d, %dpx) written to %s", seed, size, root)
    return root


def _encode_any(image: np.ndarray) -> bytes:
    """RGB or RGBA uint8 -> PNG bytes (cv2 wants BGR/BGRA)."""
    if image.shape[2] == 4:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, [2, 1, 0, 3]]))
        return buf.tobytes()
    return encode_png(image)


def write_folders(out: Path | str, seed: int = 0, size: int = 512) -> Path:
    """Write the synthetic images in the own-data layout (module docstring) into `out`; return it."""
    root = Path(out)
    identity.claim(root, "synth")
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    identity.write(root, identity.Identity("synth", {"seed": seed, "size": size, "layout": "folders"}))
    rows = ["image,group"]
    for pp, count in PATIENT_COUNTS.items():
        stain = np.random.default_rng([seed, int(pp)]).uniform(0.9, 1.08, 3).astype(np.float32)
        for k in range(1, count + 1):
            name = f"patient{pp}-tile{k}"
            image, labels = synth_labelled(np.random.default_rng([seed, int(pp), k]), size, stain)
            if pp == "03":
                ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                atomic_write_bytes(root / "images" / f"{name}.jpg", buf.tobytes())
                rows.append(f"{name}.jpg,patient{pp}")
            else:
                atomic_write_bytes(root / "images" / f"{name}.png", encode_png(image))
                rows.append(f"{name}.png,patient{pp}")
            mask = labels.astype(np.uint16) if k % 2 else binary_mask(labels)
            atomic_write_bytes(root / "masks" / f"{name}.png", encode_png(mask))
    atomic_write_bytes(root / "groups.csv", ("\n".join(rows) + "\n").encode())
    log.info("synthetic own-data folder (seed %d, %dpx) written to %s", seed, size, root)
    return root
