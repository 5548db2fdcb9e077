"""Test-time BatchNorm statistics from the image itself (AdaBN per image) against the training's running ones.

    python -m benchmarks.bn_probe cv/rerun_seed3 cv/batch4_seed3 cv/dropout_seed3

Per-patient pixel bias (BENCHMARKS.md §1aa) may come from stain: a test patient's activations sit away from the
training patients' running BatchNorm statistics. Normalising each layer by the statistics of the image being
segmented (its 8 flips/rotations in one batch, the whole 512² image, no tiling) adapts every layer to that
image alone, with no label and no other test image. Arms per trained fold, each with its post-processing
searched on valid as `tnbc eval` searches it, scored on test (means over images):
  running  the CV's own TTA probabilities (tiled 256² windows, running statistics; `benchmarks.fold_cache`)
  whole    the whole image in one pass per view, running statistics (what the image arm changes besides BN)
  image    the whole image, every BatchNorm on the batch of its 8 views (dropout layers set to rate 0)
One JSON line per fold, then means per CV folder and over all folds, and the paired differences from running.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.fold_cache import METRICS, chosen_on_valid, fold_cases, means_on_test

VIEWS = [(k, f) for k in range(4) for f in (False, True)]


def _views(image: np.ndarray) -> np.ndarray:
    """float32 (H, W, 3) -> (8, H, W, 3): the 8 flips/rotations of a square image."""
    out = []
    for k, flip in VIEWS:
        x = np.rot90(image, k)
        out.append(x[:, ::-1] if flip else x)
    return np.ascontiguousarray(np.stack(out))


def _undo(probs: np.ndarray) -> np.ndarray:
    """(8, H, W, C) predictions of `_views` -> their mean (H, W, C), each view turned back first."""
    total = np.zeros(probs.shape[1:], np.float32)
    for (k, flip), y in zip(VIEWS, probs):
        total += np.rot90(y[:, ::-1] if flip else y, -k)
    return total / len(VIEWS)


def whole_predictor(model, image_stats: bool):
    """image float32 (H, W, 3), H = W a multiple of the net's stride -> (H, W, C) mean over the 8 views;
    `image_stats`: every BatchNorm normalises by the 8 views' own statistics (Keras training mode)."""
    import keras

    if image_stats:  # training mode must not turn dropout on
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0

    def predict(image: np.ndarray) -> np.ndarray:
        if image.shape[0] != image.shape[1] or image.shape[0] % 16:
            raise SystemExit(f"image {image.shape}: the probe needs square images divisible by 16")
        return _undo(np.asarray(model(_views(image), training=image_stats), np.float32))

    return predict


def fold_row(fold_dir: Path) -> dict:
    """{"fold", arm: test means at the arm's own valid choice} for one trained fold."""
    row = {"fold": str(fold_dir)}
    for arm in ("running", "whole", "image"):
        channels, cases = (fold_cases(fold_dir) if arm == "running" else
                           fold_cases(fold_dir, arm, lambda run: whole_predictor(run.model, arm == "image")))
        row[arm] = means_on_test(cases, channels, chosen_on_valid(cases, channels))
    return row


def _line(label: str, rows: list[dict], arm: str, base: str | None = None) -> str:
    diff = (lambda r, m: r[arm][m] - r[base][m]) if base else (lambda r, m: r[arm][m])
    return f"# {label}: " + " ".join(f"{m} {np.mean([diff(r, m) for r in rows]):+.4f}" for m in METRICS)


if __name__ == "__main__":
    everything = []
    for cv_dir in map(Path, sys.argv[1:]):
        rows = []
        for fold in sorted(cv_dir.glob("fold[0-9]*")):
            rows.append(fold_row(fold))
            print(json.dumps(rows[-1]), flush=True)
        for arm in ("running", "whole", "image"):
            print(_line(f"{cv_dir} {arm}", rows, arm))
        print(_line(f"{cv_dir} image - running", rows, "image", "running"))
        everything += rows
    for arm in ("whole", "image"):
        print(_line(f"all folds, {arm} - running", everything, arm, "running"))
