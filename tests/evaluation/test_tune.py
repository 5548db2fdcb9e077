"""Choosing post-processing on valid (tune.py): coordinate ascent with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from skimage.draw import disk

from tnbc_pipeline.config import PostProcess
from tnbc_pipeline.evaluation.tune import SEARCH, area_floor, area_grid, ascend, at_edge, beyond, score, searched

CHANNELS = ("mask", "interior")


def _case(nucleus_p: float, background_p: float, blob_p: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (64, 96, 2) and truth labels: two disks of radius 8 (~200 px) with mask probability
    `nucleus_p` and cores of interior probability 0.9; a 3x5 false blob of `blob_p` away from them."""
    truth = np.zeros((64, 96), np.int32)
    probs = np.zeros((64, 96, 2), np.float32)
    probs[..., 0] = background_p
    for i, centre in enumerate(((20, 20), (40, 70)), start=1):
        truth[disk(centre, 8, shape=truth.shape)] = i
        probs[disk(centre, 4, shape=truth.shape) + (1,)] = 0.9
    probs[truth > 0, 0] = nucleus_p
    probs[55:58, 5:10, 0] = blob_p
    return probs, truth


def test_ascent_finds_the_known_best_threshold_and_area() -> None:
    # nuclei at 0.33 and background at 0.22: only thresholds 0.25 and 0.30 are perfect (p > t); the
    # nearer to the start (0.5) wins the tie. A 15 px blob at 0.9 needs min_area > 15: 20 is the least.
    cases = [_case(0.33, 0.22, blob_p=0.9)]
    start = PostProcess(threshold=0.5, min_area=0, instances="interior")
    post, scores = ascend(start, ["threshold", "core_threshold", "min_area"], cases, CHANNELS, "aji")
    assert (post.threshold, post.min_area) == (0.3, 20)
    assert score(post, cases, CHANNELS, "aji") == 1.0 and score(post, cases, CHANNELS, "f1") == 1.0
    assert scores["min_area"]["10"] < 1.0 == scores["min_area"]["20"]  # the blob counts as a false nucleus
    assert post.core_threshold == 0.5  # every core threshold below 0.9 splits the same: the start is kept
    assert list(scores["threshold"]) == [f"{t:.2f}" for t in SEARCH["threshold"]]
    assert at_edge(post, ["threshold", "core_threshold", "min_area"]) == []


def test_the_sweep_never_keeps_its_own_edge() -> None:
    # The background at 0.93 is above every threshold but the grid's last (0.95), which is perfect; the
    # sweep tries 0.975 past it too (perfect as well: the tie keeps 0.95, nearer the start), so 0.95 is no
    # longer the edge of what was tried.
    post, scores = ascend(PostProcess(min_area=0), ["threshold"], [_case(0.99, 0.93)], CHANNELS, "dice")
    assert post.threshold == SEARCH["threshold"][-1] == 0.95 and at_edge(post, ["threshold"]) == []
    assert list(scores["threshold"])[-2:] == ["0.95", "0.975"] and scores["threshold"]["0.975"] == 1.0
    # The background at 0.96 with bands at 0.6 and 0.93: the higher the threshold the better, and only one
    # past the grid is perfect; 0.975 is found, and it is the limit (within 0.04 of 1), so it is an edge.
    probs, truth = _case(0.99, 0.96)
    probs[:, 88:, 0], probs[60:, :, 0] = 0.6, 0.93
    post, scores = ascend(PostProcess(min_area=0), ["threshold"], [(probs, truth)], CHANNELS, "dice")
    assert post.threshold == 0.975 and scores["threshold"]["0.95"] < 1.0 == scores["threshold"]["0.975"]
    assert at_edge(post, ["threshold"]) == ["threshold"]
    assert at_edge(PostProcess(min_area=0), ["min_area"]) == []  # min_area 0 is "no removal", not an edge


def test_what_lies_beyond_each_grid() -> None:
    assert [beyond("core_threshold", v, True) for v in (0.9, 0.95, 0.975)] == [0.95, 0.975, None]
    assert [beyond("threshold", v, False) for v in (0.05, 0.025)] == [0.025, None]
    assert [beyond("min_core", v, True) for v in (64, 128, 256)] == [128, 256, None]
    assert [beyond("min_core", v, False) for v in (2, 1)] == [1, None]
    assert (beyond("min_area", 160, True), beyond("min_area", 1280, True), beyond("min_area", 0, False)) == (
        320, None, None)
    assert beyond("orphans", True, True) is None
    assert [beyond("min_score", v, True) for v in (0.9, 0.95, 0.975)] == [0.95, 0.975, None]
    assert beyond("min_score", 0.0, False) is None  # 0: none removed, the true lower end
    post = PostProcess(core_threshold=0.975, min_core=256, min_area=640)
    assert at_edge(post, ["core_threshold", "min_core", "min_area"]) == ["core_threshold", "min_core"]


def test_the_least_area_floor_is_the_valid_truths_1st_percentile() -> None:
    _, truth = _case(0.9, 0.1)
    disk_area = int(np.count_nonzero(truth == 1))  # both disks have this area: every percentile is it
    assert area_floor([truth]) == disk_area == 193
    squares = np.zeros((40, 40), np.int32)
    squares[0:4, 0:4], squares[10:18, 10:18], squares[20:28, 20:28] = 1, 2, 3  # 16, 64, 64 px
    assert area_floor([squares, np.zeros((8, 8), np.int32)]) == 16  # 1st percentile 16 + 0.02 * 48 = 16.96
    assert area_floor([np.zeros((8, 8), np.int32)]) == 0  # no nucleus: no floor
    assert area_grid(0) == list(SEARCH["min_area"]) and area_grid(35) == [35, 40, 60, 80, 100, 130, 160]
    assert area_grid(250) == [250, 500]  # above the whole grid: a second value, so the sweep can go past it
    assert (beyond("min_area", 35, False, 35), beyond("min_area", 80, False, 35)) == (None, 40)


def test_ascent_keeps_the_least_area_at_or_above_its_floor() -> None:
    # The 15 px blob is removed from 20 px on (the first test); every area from the floor 40 on is perfect, the
    # tie keeps the floor (the start, 0, is raised to it) and the sweep does not step below it.
    cases = [_case(0.9, 0.1, blob_p=0.9)]
    post, scores = ascend(PostProcess(min_area=0), ["min_area"], cases, CHANNELS, "aji", floor=40)
    assert post.min_area == 40 and list(scores["min_area"]) == ["40", "60", "80", "100", "130", "160"]
    assert set(scores["min_area"].values()) == {1.0} and at_edge(post, ["min_area"]) == []
    # a floor above the true nuclei (193 px) removes them: the floor bounds what can be chosen
    post, scores = ascend(PostProcess(min_area=0), ["min_area"], cases, CHANNELS, "aji", floor=250)
    assert post.min_area == 250 and scores["min_area"] == {"250": 0.0, "500": 0.0}


def test_ascent_drops_a_small_false_core_by_min_core() -> None:
    # A 9 px core of 0.9 inside nucleus 1, apart from its true core, seeds a false split while min_core <= 9;
    # 16, the least grid value above 9, keeps one nucleus (64 too: a coreless nucleus keeps its own label),
    # and ties go to the value nearest the start (4).
    probs, truth = _case(0.9, 0.0)
    probs[25:28, 19:22, 1] = 0.9
    cases = [(probs, truth)]
    start = PostProcess(threshold=0.5, min_area=0, instances="interior", core_threshold=0.5, min_core=4)
    assert score(start, cases, CHANNELS, "aji") < 1.0
    post, scores = ascend(start, ["min_core"], cases, CHANNELS, "aji")
    assert post.min_core == 16 and scores["min_core"]["8"] < 1.0 == scores["min_core"]["16"] == scores["min_core"]["64"]


def test_ascent_removes_a_coreless_false_nucleus_by_orphans() -> None:
    # A 15 px blob at mask probability 0.9 with no core is a false nucleus: kept as its own nucleus it costs
    # F1 and AJI; orphans=False removes it (min_area held at 0 so only orphans can), and the true nuclei,
    # each with its core, stay. Not reported as an edge: a choice of two cases has none.
    cases = [_case(0.9, 0.0, blob_p=0.9)]
    start = PostProcess(threshold=0.5, min_area=0, instances="interior")
    post, scores = ascend(start, ["orphans"], cases, CHANNELS, "f1")
    assert post.orphans is False and scores["orphans"]["True"] < 1.0 == scores["orphans"]["False"]
    assert score(post, cases, CHANNELS, "aji") == 1.0 and at_edge(post, ["orphans"]) == []


def test_the_core_fields_are_searched_together_for_interior_models_only() -> None:
    interior, plain = SimpleNamespace(channels=CHANNELS), SimpleNamespace(channels=("mask",))
    assert searched(interior, set()) == ["threshold", "core_threshold", "min_area", "min_core", "orphans", "min_score"]
    assert searched(plain, set()) == ["threshold", "min_area", "min_score"]  # the score needs only the mask
    # a core field given: min_core and orphans stay at their defaults
    assert searched(interior, {"core_threshold"}) == ["threshold", "min_area", "min_score"]
    assert searched(interior, {"threshold", "min_area"}) == ["core_threshold", "min_core", "orphans", "min_score"]


def test_ascent_removes_a_doubtful_false_nucleus_by_min_score() -> None:
    # A 40 px blob at mask probability 0.65 (> threshold 0.5, over the least area 30, and with a core, so no
    # other field can remove it) is a false nucleus; the true nuclei sit at 0.95. Every min_score in (0.65, 0.95]
    # is perfect; the tie keeps the nearest to the start (0): 0.7. Not an edge; nor is 0, "none removed".
    probs, truth = _case(0.95, 0.0)
    probs[50:55, 40:48, 0], probs[51:54, 42:46, 1] = 0.65, 0.9
    start = PostProcess(threshold=0.5, min_area=30, instances="interior")
    post, scores = ascend(start, ["min_score"], [(probs, truth)], CHANNELS, "f1")
    assert post.min_score == 0.7 and scores["min_score"]["0.00"] == pytest.approx(4 / 5)  # 2 true + 1 false
    assert scores["min_score"]["0.70"] == 1.0
    assert scores["min_score"]["0.90"] == 1.0 and at_edge(post, ["min_score"]) == [] == at_edge(start, ["min_score"])
