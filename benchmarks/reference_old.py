"""The old ImageMaskDatasetGenerator's per-image work, re-implemented from REFERENCE.md §1 as the
baseline for `make bench` (serial; scipy elastic; JPEG output). Its bugs are kept on purpose
(3-D smoothed field, masks warped bilinearly, separate unseeded distortion fields): it is the method
we measure against, not one to use.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

SIZE = 640  # the old generator resized 512 -> 640


def _elastic(image: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    rs = np.random.RandomState(137)  # re-created per call: every image gets the same field
    shape = image.shape
    dx = gaussian_filter(rs.rand(*shape) * 2 - 1, sigma, mode="constant", cval=0) * alpha
    dy = gaussian_filter(rs.rand(*shape) * 2 - 1, sigma, mode="constant", cval=0) * alpha
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    coords = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    return map_coordinates(image, coords, order=1, mode="reflect").reshape(shape)


def _distort(image: np.ndarray, strength: float) -> np.ndarray:
    h, w = image.shape[:2]
    field = [cv2.GaussianBlur(np.random.rand(h, w).astype(np.float32) * 2 - 1, (0, 0), 16) for _ in range(2)]
    field = [f / (np.abs(f).max() + 1e-6) * strength * w for f in field]
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, x + field[0], y + field[1], cv2.INTER_LINEAR)


def _rotate(image: np.ndarray, angle: float) -> np.ndarray:
    h, w = image.shape[:2]
    border = tuple(int(c) for c in image[2][2])
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderValue=border)


def _shrink(image: np.ndarray, ratio: float) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (int(w * ratio), int(h * ratio)))
    canvas = np.full_like(image, image[2][2])
    y0, x0 = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    return canvas


def variants(image: np.ndarray, alphas=(1300,), sigmas=(8, 10)) -> list[np.ndarray]:
    """The 22 outputs of one (resized) image or mask."""
    out = [image, cv2.flip(image, 1), cv2.flip(image, 0)]
    out += [_rotate(image, a) for a in range(30, 360, 30)]
    out += [_elastic(image, a, s) for a in alphas for s in sigmas]
    out += [_distort(image, s) for s in (0.01, 0.02, 0.03)]
    out += [_shrink(image, r) for r in (0.7, 0.8, 0.9)]
    return out


def render_pair(image_path: Path, mask_path: Path, out: Path, index: int) -> int:
    """Read one pair, resize, render its 22 variants of image and mask, write JPEGs; return pairs written."""
    image = cv2.resize(cv2.imread(str(image_path)), (SIZE, SIZE))
    mask = cv2.resize(cv2.imread(str(mask_path)), (SIZE, SIZE))
    pairs = zip(variants(image), variants(mask))
    for j, (img, msk) in enumerate(pairs):
        cv2.imwrite(str(out / "images" / f"{index}_{j}.jpg"), img)
        cv2.imwrite(str(out / "masks" / f"{index}_{j}.jpg"), msk)
    return j + 1
