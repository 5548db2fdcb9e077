"""Metrics on hand-made cases and against a brute-force per-nucleus reference (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tnbc_pipeline.evaluation.metrics import instance_metrics, pixel_metrics
from tnbc_pipeline.evaluation.metrics import image_metrics as _labels_metrics
from tnbc_pipeline.config import PostProcess
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.inference.postprocess import (drop_doubtful, label_instances, remove_small, segment,
                                                 split_by_interior, split_touching)


def image_metrics(truth, pred):
    """The metrics of two binary masks, their instances being their connected components."""
    return _labels_metrics(label_instances(truth), label_instances(pred))


def _disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_identical_masks_score_one() -> None:
    mask = _disk((64, 64), 20, 20, 8) | _disk((64, 64), 45, 40, 10)
    m = image_metrics(mask, mask)
    for key in ("dice", "iou", "precision", "recall", "accuracy", "aji", "f1", "pq", "sq", "dq"):
        assert m[key] == pytest.approx(1.0), key
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)


def test_disjoint_masks_score_zero() -> None:
    a, b = _disk((64, 64), 15, 15, 6), _disk((64, 64), 48, 48, 6)
    m = image_metrics(a, b)
    assert m["dice"] == m["iou"] == m["aji"] == m["f1"] == m["pq"] == 0.0
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)


def test_one_nucleus_split_in_two() -> None:
    truth = np.zeros((20, 20), np.int32)
    truth[5:15, 5:15] = 1  # area 100
    pred = np.zeros_like(truth)
    pred[5:15, 5:10], pred[5:15, 10:15] = 1, 2  # halves, IoU 0.5 each: not a match at > 0.5
    m = instance_metrics(truth, pred)
    assert m["aji"] == pytest.approx(50 / (100 + 50))  # one half matched, the other adds its area
    assert (m["tp"], m["fp"], m["fn"], m["f1"], m["pq"]) == (0, 2, 1, 0.0, 0.0)
    assert pixel_metrics(truth > 0, pred > 0)["dice"] == 1.0  # pixels cannot see the split


def test_one_nucleus_missed() -> None:
    truth = np.zeros((30, 30), np.int32)
    truth[2:8, 2:8], truth[20:26, 20:28] = 1, 2  # areas 36 and 48
    pred = (truth == 1).astype(np.int32)
    m = instance_metrics(truth, pred)
    assert m["aji"] == pytest.approx(36 / (36 + 48))
    assert m["f1"] == pytest.approx(2 / 3) and m["dq"] == pytest.approx(2 / 3) and m["sq"] == 1.0
    assert m["pq"] == pytest.approx(2 / 3)


def test_empty_images() -> None:
    empty = np.zeros((8, 8), bool)
    assert image_metrics(empty, empty)["aji"] == 1.0 and image_metrics(empty, empty)["pq"] == 1.0
    one = empty.copy()
    one[2:4, 2:4] = True
    assert image_metrics(empty, one)["f1"] == 0.0 and image_metrics(one, empty)["aji"] == 0.0


def test_split_touching_separates_two_overlapping_disks() -> None:
    mask = _disk((60, 80), 30, 25, 12) | _disk((60, 80), 30, 48, 12)
    assert label_instances(mask).max() == 1
    labels = split_touching(mask, min_distance=3)
    assert labels.max() == 2 and ((labels > 0) == mask).all()
    truth = np.zeros_like(labels)
    truth[_disk((60, 80), 30, 25, 12)] = 1
    truth[_disk((60, 80), 30, 48, 12) & (truth == 0)] = 2
    assert instance_metrics(truth, labels)["f1"] == 1.0  # both nuclei found once split


def _brute(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Per-nucleus reference: the definitions of REFERENCE.md §3, one full-image mask per nucleus."""
    tids, pids = [i for i in np.unique(t) if i], [i for i in np.unique(p) if i]
    inter_sum = union_sum = 0
    used = set()
    for g in tids:
        gm = t == g
        best, best_iou = None, -1.0
        for s in pids:
            sm = p == s
            inter = np.count_nonzero(gm & sm)
            if inter and inter / np.count_nonzero(gm | sm) > best_iou:
                best, best_iou = s, inter / np.count_nonzero(gm | sm)
        if best is None:
            union_sum += np.count_nonzero(gm)
        else:
            inter_sum += np.count_nonzero(gm & (p == best))
            union_sum += np.count_nonzero(gm | (p == best))
            used.add(best)
    union_sum += sum(np.count_nonzero(p == s) for s in pids if s not in used)
    ious = [np.count_nonzero((t == g) & (p == s)) / np.count_nonzero((t == g) | (p == s)) for g in tids for s in pids]
    matched = [v for v in ious if v > 0.5]
    tp, fp, fn = len(matched), len(pids) - len(matched), len(tids) - len(matched)
    return {"aji": inter_sum / union_sum if union_sum else 1.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "pq": (tp / (tp + fp / 2 + fn / 2)) * (sum(matched) / tp) if tp else (1.0 if not (fp or fn) else 0.0)}


_rects = st.lists(st.tuples(st.integers(0, 17), st.integers(0, 17), st.integers(1, 8), st.integers(1, 8)), max_size=7)


def _draw(rects) -> np.ndarray:
    labels = np.zeros((20, 20), np.int32)
    for i, (y, x, h, w) in enumerate(rects, start=1):
        labels[y : y + h, x : x + w] = i * 7  # sparse ids: the metric must not depend on their values
    return labels


@settings(max_examples=300, deadline=None)
@given(_rects, _rects)
def test_vectorised_metrics_equal_the_brute_force_reference(truth_rects, pred_rects) -> None:
    t, p = _draw(truth_rects), _draw(pred_rects)
    fast, slow = instance_metrics(t, p), _brute(t, p)
    for key in ("aji", "f1", "pq"):
        assert fast[key] == pytest.approx(slow[key]), key


def test_split_keeps_every_component_even_without_a_peak() -> None:
    mask = np.zeros((30, 30), bool)
    mask[5, 2:28] = True  # a one-pixel line: no peak survives the window on some runs of equal distance
    mask[15:25, 15:25] = True
    labels = split_touching(mask, min_distance=5)
    assert ((labels > 0) == mask).all() and labels[5, 2] > 0 and labels[20, 20] > 0


def test_remove_small_drops_only_objects_under_the_area() -> None:
    mask = _disk((64, 64), 20, 20, 8)
    mask[50:52, 50:52] = True  # a 4-px speckle
    mask[40:46, 5:10] = True  # a 30-px object
    out = remove_small(mask, 30)
    assert not out[50:52, 50:52].any() and out[40:46, 5:10].all() and out[_disk((64, 64), 20, 20, 8)].all()
    assert np.array_equal(remove_small(mask, 0), mask) and not remove_small(np.zeros((8, 8)), 5).any()


def test_interior_cores_split_touching_nuclei_along_their_valley() -> None:
    a, b = _disk((64, 96), 32, 30, 14), _disk((64, 96), 32, 56, 14)  # overlapping: one component
    lone = _disk((64, 96), 8, 88, 4)  # a small nucleus whose core the model missed
    pred = a | b | lone
    interior = np.zeros(pred.shape, np.float32)
    interior[_disk(pred.shape, 32, 30, 9)] = 0.9
    interior[_disk(pred.shape, 32, 56, 9)] = 0.8
    interior[_disk(pred.shape, 32, 43, 1)] = 0.2  # the valley between the cores
    labels = split_by_interior(pred, interior)
    assert len(np.unique(labels[pred])) == 3 and not labels[~pred].any()  # two split nuclei + the orphan
    assert labels[32, 20] != labels[32, 66] and labels[32, 20] == labels[32, 36] and labels[32, 50] == labels[32, 66]
    probs = np.dstack([pred.astype(np.float32), interior])
    channels = ("mask", "interior")
    for method, nuclei in (("interior", 3), ("components", 2), ("watershed", 3)):
        labels = segment(probs, channels, PostProcess(instances=method, min_area=0))
        assert len(np.unique(labels[pred])) == nuclei and not labels[~pred].any(), method
    # components: the touching pair is one object; segment's labels score like any other labels
    truth = label_instances(a & ~b) + 2 * label_instances(b) + 3 * label_instances(lone)
    assert _labels_metrics(truth, segment(probs, channels, PostProcess(instances="interior", min_area=0)))["n_pred"] == 3
    with pytest.raises(TnbcError, match="needs a model with the interior channel"):
        segment(probs[..., :1], ("mask",), PostProcess(instances="interior"))
    small = segment(probs, channels, PostProcess(instances="components", min_area=60))  # lone: ~49 px, dropped
    assert not small[lone].any() and small[a].all()
    # orphans=False: the coreless object is taken for a false nucleus and removed; the cored pair is untouched
    kept, pair = split_by_interior(pred, interior, orphans=False), split_by_interior(pred, interior)[a | b]
    assert not kept[lone].any() and np.array_equal(kept[a | b], pair) and len(np.unique(pair)) == 2
    dropped = segment(probs, channels, PostProcess(instances="interior", min_area=0, orphans=False))
    assert not dropped[lone].any() and len(np.unique(dropped[a | b])) == 2


def test_drop_doubtful_removes_whole_objects_under_the_mean_probability() -> None:
    # Three objects of mean probability 0.9, 0.75 (half 0.6, half 0.9: whole, not pixel by pixel) and 0.6.
    labels = np.zeros((4, 12), np.int32)
    labels[:, 0:2], labels[:, 4:8], labels[:, 10:12] = 1, 2, 3
    probability = np.zeros((4, 12), np.float32)
    probability[:, 0:2], probability[:, 4:6], probability[:, 6:8], probability[:, 10:12] = 0.9, 0.6, 0.9, 0.6
    kept = drop_doubtful(labels, probability, 0.7)
    assert kept.dtype == np.int32 and np.array_equal(kept, np.where(labels == 3, 0, labels))
    assert np.array_equal(drop_doubtful(labels, probability, 0.8), np.where(labels == 1, 1, 0))
    assert drop_doubtful(labels, probability, 0.0) is labels  # 0: none removed
    probs = np.stack([probability, np.zeros_like(probability)], -1)
    post = PostProcess(threshold=0.5, min_area=0, instances="components", min_score=0.7)
    assert np.array_equal(segment(probs, ("mask", "interior"), post) > 0, kept > 0)  # segment applies it last
    with pytest.raises(TnbcError, match="min_score"):
        PostProcess(min_score=1.0)
