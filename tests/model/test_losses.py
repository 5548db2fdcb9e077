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
