"""Losses and metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

from tnbc_pipeline.model import losses  # noqa: E402

T = np.zeros((1, 2, 2, 1), np.float32)
T[0, 0, 0, 0] = T[0, 0, 1, 0] = 1.0  # two nucleus pixels of four
P = np.array([0.5, 1.0, 0.0, 0.5], np.float32).reshape(1, 2, 2, 1)


def _v(fn, t=T, p=P) -> float:
    return float(fn(t, p))


def test_dice_and_iou_by_hand() -> None:
    inter, st, sp = 1.5, 2.0, 2.0  # |P.G| = 0.5 + 1.0
    assert _v(losses.dice_coef) == pytest.approx((2 * inter + 1) / (st + sp + 1))
    assert _v(losses.iou_coef) == pytest.approx((inter + 1) / (st + sp - inter + 1))
    assert _v(losses.dice_loss) == pytest.approx(1 - (2 * inter + 1) / (st + sp + 1))
    assert _v(losses.dice_coef, T, T) == pytest.approx(1.0) and _v(losses.iou_loss, T, T) == pytest.approx(0.0)
    empty = np.zeros_like(T)
    assert _v(losses.dice_coef, empty, empty) == pytest.approx(1.0)  # smoothing: empty vs empty is perfect


def test_bce_and_the_old_bce_dice_definition() -> None:
    eps = 1e-7
    per_pixel = [-math.log(0.5), -math.log(1 - eps), -math.log(1 - eps), -math.log(0.5)]
    bce = sum(per_pixel) / 4
    assert _v(losses.bce) == pytest.approx(bce, rel=1e-4)
    dice = (2 * 1.5 + 1) / (4 + 1)
    assert _v(losses.bce_dice_loss) == pytest.approx((bce + 1 - dice) / 2, rel=1e-4)
    iou = (1.5 + 1) / (2.5 + 1)
    assert _v(losses.bce_iou_loss) == pytest.approx((bce + 1 - iou) / 2, rel=1e-4)


def test_tversky_weighs_misses_over_false_alarms() -> None:
    miss = np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1)  # finds 1 of 2: one FN
    alarm = np.array([1, 1, 1, 0], np.float32).reshape(1, 2, 2, 1)  # finds both + one FP
    assert _v(losses.tversky_loss, T, miss) == pytest.approx(1 - (1 + 1) / (1 + 0.7 * 1 + 1))
    assert _v(losses.tversky_loss, T, alarm) == pytest.approx(1 - (2 + 1) / (2 + 0.3 * 1 + 1))
    assert _v(losses.tversky_loss, T, miss) > _v(losses.tversky_loss, T, alarm)


def test_focal_by_hand_and_zero_when_perfect() -> None:
    p = np.clip(P, 1e-7, 1 - 1e-7)
    t = T
    pt = t * p + (1 - t) * (1 - p)
    at = t * 0.25 + (1 - t) * 0.75
    assert _v(losses.focal_loss) == pytest.approx(float(np.mean(-at * (1 - pt) ** 2 * np.log(pt))), rel=1e-5)
    assert _v(losses.focal_loss, T, T) == pytest.approx(0.0, abs=1e-6)


def test_every_loss_is_registered_for_loading() -> None:
    import keras

    for name, fn in losses.LOSSES.items():
        assert keras.saving.get_registered_object(f"tnbc>{fn.__name__}") is fn, name


def test_metrics_score_the_mask_channel_only_and_losses_every_channel() -> None:
    from tnbc_pipeline.config import LossName, choices

    assert sorted(losses.LOSSES) == sorted(choices(LossName))  # every configurable loss exists, no other
    interior = np.ones_like(T)  # a second channel the prediction gets completely wrong
    t2, p2 = np.concatenate([T, interior], -1), np.concatenate([P, 1 - interior], -1)
    assert _v(losses.dice_coef, t2, p2) == pytest.approx(_v(losses.dice_coef))
    assert _v(losses.iou_coef, t2, p2) == pytest.approx(_v(losses.iou_coef))
    assert _v(losses.dice_loss, t2, p2) > _v(losses.dice_loss) + 0.2  # the loss sees the wrong channel
    for metric, expected in ((losses.MaskPrecision(), 1.0), (losses.MaskRecall(), 1 / 2),
                             (losses.MaskBinaryAccuracy(), 3 / 4)):  # pixels above 0.5: only [0, 1] of P
        metric.update_state(t2, p2)
        assert float(metric.result()) == pytest.approx(expected), metric.name


def test_gap_map_marks_the_gap_between_two_nuclei_and_nothing_else() -> None:
    t = np.zeros((1, 12, 16, 2), np.float32)
    t[0, 3:9, 2:7, 0] = 1.0  # nucleus A: columns 2..6
    t[0, 3:9, 8:13, 0] = 1.0  # nucleus B: columns 8..12, a 1-px gap at column 7
    t[0, 4:8, 3:6, 1] = 1.0  # an interior channel: ignored by the map
    gap = np.asarray(losses.gap_map(t))[0, ..., 0]
    expected = np.zeros((12, 16), np.float32)
    expected[3:9, 7] = 1.0  # exactly the gap: the squares are convex, and the 2-px margins to the edge stay open
    np.testing.assert_array_equal(gap, expected)
    lone = t.copy()
    lone[0, :, 8:, 0] = 0.0  # one nucleus alone: no gap at all
    assert float(np.asarray(losses.gap_map(lone)).sum()) == 0.0


def test_bce_dice_gap_weighs_the_gap_pixels_by_hand() -> None:
    t = np.zeros((1, 12, 16, 1), np.float32)
    t[0, 3:9, 2:7, 0] = t[0, 3:9, 8:13, 0] = 1.0
    p = np.full_like(t, 0.5)  # every pixel's BCE is ln 2
    n, gaps = t.size, 6
    dice = (2 * 0.5 * t.sum() + 1) / (t.sum() + 0.5 * n + 1)
    weighted = math.log(2) * (n + (losses.GAP_WEIGHT - 1) * gaps) / n
    assert _v(losses.bce_dice_gap_loss, t, p) == pytest.approx((weighted + 1 - dice) / 2, rel=1e-5)
    # without a gap it is bce_dice exactly
    lone = t.copy()
    lone[0, :, 8:, 0] = 0.0
    assert _v(losses.bce_dice_gap_loss, lone, p) == pytest.approx(_v(losses.bce_dice_loss, lone, p), rel=1e-6)


def test_gap_map_is_scipys_closing_minus_the_mask() -> None:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    masks = (ndi.uniform_filter(rng.random((4, 40, 40)), 5) > 0.52).astype(np.float32)  # blobs, gaps, notches
    gap = np.asarray(losses.gap_map(masks[..., None]))[..., 0]
    for m, g in zip(masks, gap):
        window = np.ones((losses.GAP_WINDOW,) * 2, bool)
        expected = ndi.binary_closing(m > 0, window, border_value=0) & (m == 0)
        assert expected.sum() > 0
        np.testing.assert_array_equal(g, expected.astype(np.float32))
