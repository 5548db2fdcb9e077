"""Whole-image and sliding-window prediction, pure numpy around a `predict` callable.

`predict(batch)`: float32 (N, h, w, 3) in [0, 1] -> float32 (N, h, w, C) probabilities (a Keras model's
`predict_on_batch`, or anything else). Tiles overlap and are blended with a Gaussian weight (high in the
tile centre, low at its edges, where a convolutional net sees reflected context), so seams do not show.
Images are reflect-padded to a multiple the network needs, and to at least one tile.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


def gaussian_weight(tile: int, sigma_scale: float = 0.125) -> np.ndarray:
    """float32 (tile, tile) Gaussian with std tile * sigma_scale, max 1, floored at 1e-3 (nnU-Net style)."""
    axis = np.arange(tile, dtype=np.float32) - (tile - 1) / 2
    g = np.exp(-(axis**2) / (2 * (tile * sigma_scale) ** 2))
    w = np.outer(g, g)
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def starts(length: int, tile: int, step: int) -> list[int]:
    """Window starts covering [0, length) with `tile`-long windows `step` apart; the last ends at length."""
    if length <= tile:
        return [0]
    out = list(range(0, length - tile, step))
    return out + [length - tile]


def _pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    return np.pad(image, ((0, height - h), (0, width - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _tta(predict: Predict, batch: np.ndarray) -> np.ndarray:
    """Mean prediction over the 8 flips/rotations of square tiles (4 flips if not square), undone."""
    square = batch.shape[1] == batch.shape[2]
    total = None
    transforms = [(k, f) for k in (range(4) if square else (0, 2)) for f in (False, True)]
    for k, flip in transforms:
        x = np.rot90(batch, k, axes=(1, 2))
        x = x[:, :, ::-1] if flip else x
        y = predict(np.ascontiguousarray(x))
        y = y[:, :, ::-1] if flip else y
        y = np.rot90(y, -k, axes=(1, 2))
        total = y.astype(np.float32) if total is None else total + y
    return total / len(transforms)


def predict_image(predict: Predict, image: np.ndarray, tile: int | None = None, overlap: float = 0.5,
                  multiple: int = 16, tta: bool = False, batch_size: int = 4) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] -> float32 (H, W, C) probabilities (C: the model's output channels).

    tile=None (or an image no larger than the tile): one pass over the whole padded image; otherwise
    tile x tile windows, `overlap` of a tile apart, Gaussian-blended. `multiple`: the net's size
    divisor, 2 ** (levels - 1).
    """
    h, w = image.shape[:2]
    run = (lambda b: _tta(predict, b)) if tta else predict
    if tile is None or (h <= tile and w <= tile):
        padded = _pad(image, _round_up(h, multiple), _round_up(w, multiple))
        return run(padded[None].astype(np.float32))[0, :h, :w]
    if tile % multiple:
        raise ValueError(f"tile {tile} must divide by {multiple}")
    ph, pw = max(h, tile), max(w, tile)
    padded = _pad(image, ph, pw).astype(np.float32)
    step = max(1, int(tile * (1 - overlap)))
    weight = gaussian_weight(tile)
    acc, norm = None, np.zeros((ph, pw, 1), np.float32)
    windows = [(y, x) for y in starts(ph, tile, step) for x in starts(pw, tile, step)]
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        probs = run(np.stack([padded[y : y + tile, x : x + tile] for y, x in chunk]))
        if acc is None:
            acc = np.zeros((ph, pw, probs.shape[-1]), np.float32)
        for (y, x), p in zip(chunk, probs):
            acc[y : y + tile, x : x + tile] += p * weight[..., None]
            norm[y : y + tile, x : x + tile] += weight[..., None]
    return (acc / norm)[:h, :w]
