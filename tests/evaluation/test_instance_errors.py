"""benchmarks/instance_errors.py: each kind of error counted once, on drawn nuclei with known answers."""

from __future__ import annotations

import dataclasses

import numpy as np
from skimage.draw import disk

from benchmarks.instance_errors import CorePost, error_kinds, fill_holes, segment, split_cores


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 6) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i, c in enumerate(centres, 1):
        labels[disk(c, radius, shape=shape)] = i
    return labels


def test_error_kinds_names_each_mistake() -> None:
    truth = discs((64, 96), [(15, 15), (15, 28), (45, 15), (45, 50), (15, 75)])  # 1, 2 touch; 5 will be split
    truth[:, 21:22] = 0  # the release parts touching nuclei by a background line
    pred = np.zeros_like(truth)
    pred[(truth == 1) | (truth == 2)] = 1  # one object over nuclei 1 and 2: two merges
    pred[:, 21:22][pred[:, 20:21] > 0] = 1
    pred[truth == 3] = 2  # nucleus 3 exact: the one match; nucleus 4 missed
    column = np.arange(96)[None, :]
    pred[(truth == 5) & (column < 75)] = 3  # nucleus 5 in two halves, its middle column lost: a split
    pred[(truth == 5) & (column > 75)] = 4
    pred[55:60, 80:85] = 5  # on background: a spurious object
    counts = error_kinds(truth, pred)
    assert counts == {"missed": 1, "merged": 2, "split": 1, "poor": 0, "fp_spurious": 1, "fp_other": 3}


def test_a_dumbbell_core_is_split_at_its_waist_only_when_asked() -> None:
    cores = np.zeros((40, 60), np.int32)  # a big and a small disc overlapping: one core, a dumbbell
    cores[disk((20, 20), 8, shape=cores.shape)] = 1
    cores[disk((20, 31), 5, shape=cores.shape)] = 1
    assert cores.max() == 1  # depth (distance transform) 8 and 5 at the centres, 4 at the waist: a 1-px dip
    assert split_cores(cores, 1.0).max() == 2
    assert split_cores(cores, 2.0).max() == 1  # h beyond the dip: one core stays one
    probs = np.stack([cores.astype(np.float32), cores.astype(np.float32)], -1)  # mask = interior = the core
    post = CorePost(instances="interior", threshold=0.5, min_area=0, core_threshold=0.5, min_core=1)
    assert segment(probs, ("mask", "interior"), post).max() == 1  # core_split 0: the package's segment
    assert segment(probs, ("mask", "interior"), dataclasses.replace(post, core_split=1.0)).max() == 2


def test_fill_holes_fills_background_holes_only_and_only_when_asked() -> None:
    labels = np.zeros((30, 60), np.int32)
    labels[disk((15, 15), 10, shape=labels.shape)] = 1
    labels[disk((15, 15), 4, shape=labels.shape)] = 0  # a ring: its hole is background
    labels[disk((15, 45), 10, shape=labels.shape)] = 2
    labels[disk((15, 45), 4, shape=labels.shape)] = 3  # a nucleus inside another's ring keeps its label
    filled = fill_holes(labels)
    assert (filled[disk((15, 15), 4, shape=labels.shape)] == 1).all()
    assert np.array_equal(filled[:, 30:], labels[:, 30:]) and np.array_equal(filled[labels > 0], labels[labels > 0])
    probs = np.stack([(labels == 1).astype(np.float32)] * 2, -1)  # the ring is mask and core
    post = CorePost(instances="interior", threshold=0.5, min_area=0, core_threshold=0.5, min_core=1)
    assert segment(probs, ("mask", "interior"), post)[15, 15] == 0
    assert segment(probs, ("mask", "interior"), dataclasses.replace(post, fill_holes=1))[15, 15] == 1
