"""Nuclei segmentation metrics, pure numpy (REFERENCE.md §3): truth vs predicted instance labels.

Inputs are binary masks (H, W) (any dtype; nonzero = nucleus) or int label images (H, W) with 0 as
background; predicted labels come from `tnbc_pipeline.inference.postprocess.segment`. Instance metrics are computed from one contingency table of (truth label, predicted label)
pixel counts built with a single `np.bincount`, so an image with a hundred nuclei costs milliseconds:
no per-nucleus pass over the full image.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import relabel_sequential

from tnbc_pipeline.inference.postprocess import label_instances


def pixel_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision, recall, accuracy of two binary masks. Empty vs empty counts as perfect."""
    t, p = truth.astype(bool), pred.astype(bool)
    tp = float(np.count_nonzero(t & p))
    fp = float(np.count_nonzero(~t & p))
    fn = float(np.count_nonzero(t & ~p))
    tn = float(t.size) - tp - fp - fn
    return {"dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "accuracy": (tp + tn) / t.size}


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in increasing order of their ids (0 stays background).

    A bincount lookup table, O(pixels) without sorting; np.unique only for negative or huge sparse ids.
    """
    flat = labels.ravel()
    top = int(flat.max(initial=0))
    if flat.size and (int(flat.min()) < 0 or top > 4 * flat.size):
        ids, inverse = np.unique(labels, return_inverse=True)
        return (inverse + (ids[0] != 0)).reshape(labels.shape)
    present = np.bincount(flat, minlength=1) > 0
    present[0] = False
    lut = np.zeros(top + 1, np.int64)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return lut[labels]


def contingency(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (intersections (n_t, n_p), truth areas (n_t,), pred areas (n_p,)) for labels 1..n, background dropped."""
    t, p = _relabel(truth).ravel(), _relabel(pred).ravel()
    n_t, n_p = int(t.max()), int(p.max())
    table = np.bincount(t * (n_p + 1) + p, minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    return table[1:, 1:].astype(np.int64), table[1:, :].sum(1), table[:, 1:].sum(0)


def instance_metrics(truth_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """AJI (Kumar 2017), object precision/recall/F1 at IoU > threshold (unique matches), PQ = DQ x SQ."""
    inter, area_t, area_p = contingency(truth_labels, pred_labels)
    n_t, n_p = len(area_t), len(area_p)
    union = area_t[:, None] + area_p[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    # AJI: each true nucleus takes the prediction of highest IoU; unused predictions add to the union.
    if n_t and n_p:
        best = iou.argmax(1)
        hit = inter[np.arange(n_t), best] > 0
        aji_inter = float(inter[np.arange(n_t), best][hit].sum())
        aji_union = float(union[np.arange(n_t), best][hit].sum() + area_t[~hit].sum())
        used = np.zeros(n_p, bool)
        used[best[hit]] = True
        aji_union += float(area_p[~used].sum())
    else:
        aji_inter, aji_union = 0.0, float(area_t.sum() + area_p.sum())
    aji = aji_inter / aji_union if aji_union else 1.0
    # IoU > 0.5 makes a match unique on both sides, so no assignment step is needed at that threshold.
    matched = iou > iou_threshold if iou_threshold >= 0.5 else _greedy_unique(iou, iou_threshold)
    tp = int(matched.sum())
    fp, fn = n_p - tp, n_t - tp
    sq = float(iou[matched].mean()) if tp else 0.0
    dq = tp / (tp + fp / 2 + fn / 2) if tp + fp + fn else 1.0
    return {"aji": aji, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "object_precision": tp / n_p if n_p else 1.0, "object_recall": tp / n_t if n_t else 1.0,
            "pq": dq * sq if tp else (1.0 if not (fp or fn) else 0.0), "dq": dq, "sq": sq,
            "tp": tp, "fp": fp, "fn": fn, "n_true": n_t, "n_pred": n_p}


def _greedy_unique(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Unique matching for thresholds below 0.5: pairs taken in decreasing IoU, each side once."""
    matched = np.zeros(iou.shape, bool)
    rows, cols = np.nonzero(iou > threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_t, used_p = set(), set()
    for r, c in zip(rows[order], cols[order]):
        if r not in used_t and c not in used_p:
            matched[r, c] = True
            used_t.add(r)
            used_p.add(c)
    return matched


def image_metrics(truth_labels: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric of one image, from truth and predicted instance labels (int (H, W), 0 = background):
    the pixel metrics of their masks and the instance metrics of their labels. The one place the two
    are combined, for eval, infer --masks, cv and study alike."""
    return {**pixel_metrics(truth_labels > 0, labels > 0), **instance_metrics(truth_labels, labels)}


def truth_labels(mask: np.ndarray) -> np.ndarray:
    """A stored truth mask (H, W), 0 = background -> int32 labels 1..n. Instance labels (more than one
    non-zero value: own data with instance masks) are kept, renumbered in order; a binary mask's nuclei
    are its 8-connected components (the release separates touching nuclei by one-pixel background lines)."""
    values = np.unique(mask)
    if values[values != 0].size > 1:
        return relabel_sequential(np.asarray(mask, np.int64))[0].astype(np.int32)
    return label_instances(mask > 0)
