"""Losses and metrics for binary nuclei masks, in keras.ops (any backend), registered as 'tnbc>name'.

Tensors: y_true float32 in {0, 1} and y_pred float32 probabilities, both (B, H, W, C), channel i holding
`ModelConfig.channels[i]` (the mask, then the interior when the model has it). Losses train every
channel; the metrics score the mask channel alone, so `val_dice_coef` is the mask's Dice whatever else
the model predicts. Dice and IoU are computed per image and averaged over the batch, with smoothing 1
(as the old system's dice_coef), so an empty image predicted empty scores 1.
"""

from __future__ import annotations

import keras
from keras import ops

from tnbc_pipeline.config import MASK_CHANNEL as MASK

SMOOTH = 1.0
register = keras.saving.register_keras_serializable(package="tnbc")


def _mask(y_true, y_pred):
    """The mask channel of both tensors, (B, H, W, 1)."""
    return y_true[..., MASK : MASK + 1], y_pred[..., MASK : MASK + 1]


def _sums(y_true, y_pred):
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = tuple(range(1, len(y_pred.shape)))
    inter = ops.sum(y_true * y_pred, axis=axes)
    return inter, ops.sum(y_true, axis=axes), ops.sum(y_pred, axis=axes)


def _dice(y_true, y_pred):
    """Soft Dice per image over every channel, mean over the batch: (2|P.G| + 1) / (|P| + |G| + 1)."""
    inter, t, p = _sums(y_true, y_pred)
    return ops.mean((2 * inter + SMOOTH) / (t + p + SMOOTH))


def _iou(y_true, y_pred):
    """Soft IoU (Jaccard) per image over every channel, mean over the batch: (|P.G| + 1) / (|P| + |G| - |P.G| + 1)."""
    inter, t, p = _sums(y_true, y_pred)
    return ops.mean((inter + SMOOTH) / (t + p - inter + SMOOTH))


@register
def dice_coef(y_true, y_pred):
    """Metric: soft Dice of the mask channel."""
    return _dice(*_mask(y_true, y_pred))


@register
def iou_coef(y_true, y_pred):
    """Metric: soft IoU of the mask channel."""
    return _iou(*_mask(y_true, y_pred))


@register
def bce(y_true, y_pred):
    """Binary cross-entropy, mean over pixels and batch."""
    return ops.mean(keras.losses.binary_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred))


@register
def dice_loss(y_true, y_pred):
    return 1 - _dice(y_true, y_pred)


@register
def iou_loss(y_true, y_pred):
    return 1 - _iou(y_true, y_pred)


@register
def bce_dice_loss(y_true, y_pred):
    """The old system's default: (BCE + (1 - dice)) / 2."""
    return (bce(y_true, y_pred) + dice_loss(y_true, y_pred)) / 2


# Gap weighting (U-Net, Ronneberger et al. 2015, in its binary-mask form): the background between nearby nuclei
# -- what a morphological closing of the mask fills, 0.35% of the release's pixels -- weighted so that merges
# across it cost more. Measured on the recipe (BENCHMARKS.md §1o): level with bce_dice, and no fewer merges.
GAP_WINDOW = 5  # closing square: background gaps up to 4 px wide between two nuclei
GAP_WEIGHT = 10.0  # BCE weight of a gap pixel (every other pixel: 1); U-Net's w0 = 10


def gap_map(y_true):
    """Mask channel of y_true (B, H, W, C) -> float (B, H, W, 1): 1 on the background pixels that a
    GAP_WINDOW-square closing of the mask fills (gaps between nearby nuclei, deep notches), else 0."""
    mask = y_true[..., MASK : MASK + 1]
    dilated = ops.max_pool(mask, GAP_WINDOW, 1, "same")
    # the erosion counts outside the image as background, so a nucleus at the edge closes nothing against it
    r = GAP_WINDOW // 2
    closed = -ops.max_pool(-ops.pad(dilated, [[0, 0], [r, r], [r, r], [0, 0]]), GAP_WINDOW, 1, "valid")
    return closed * (1 - mask)


@register
def bce_dice_gap_loss(y_true, y_pred):
    """`bce_dice` with each pixel's BCE weighted GAP_WEIGHT on `gap_map`'s pixels, in every channel:
    (mean(w * BCE) + (1 - dice)) / 2."""
    y_true = ops.cast(y_true, y_pred.dtype)
    weight = 1 + (GAP_WEIGHT - 1) * gap_map(y_true)[..., 0]
    pixel = keras.losses.binary_crossentropy(y_true, y_pred)  # (B, H, W): mean over the channels
    return (ops.mean(weight * pixel) + dice_loss(y_true, y_pred)) / 2


@register
def bce_iou_loss(y_true, y_pred):
    return (bce(y_true, y_pred) + iou_loss(y_true, y_pred)) / 2


@register
def focal_loss(y_true, y_pred, gamma: float = 2.0, alpha: float = 0.25):
    """Binary focal loss (Lin et al. 2017): down-weights easy pixels, mostly background here."""
    y_true = ops.cast(y_true, y_pred.dtype)
    p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
    pt = y_true * p + (1 - y_true) * (1 - p)
    at = y_true * alpha + (1 - y_true) * (1 - alpha)
    return ops.mean(-at * (1 - pt) ** gamma * ops.log(pt))


@register
def tversky_loss(y_true, y_pred, alpha: float = 0.3, beta: float = 0.7):
    """1 - Tversky index; beta > alpha weighs missed nuclei (FN) over false alarms (FP)."""
    inter, t, p = _sums(y_true, y_pred)
    fn, fp = t - inter, p - inter
    return 1 - ops.mean((inter + SMOOTH) / (inter + alpha * fp + beta * fn + SMOOTH))


@register
class MaskBinaryAccuracy(keras.metrics.BinaryAccuracy):
    """Binary accuracy of the mask channel."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(*_mask(y_true, y_pred), sample_weight)


@register
class MaskPrecision(keras.metrics.Precision):
    """Pixel precision of the mask channel (threshold 0.5)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(*_mask(y_true, y_pred), sample_weight)


@register
class MaskRecall(keras.metrics.Recall):
    """Pixel recall of the mask channel (threshold 0.5)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(*_mask(y_true, y_pred), sample_weight)


LOSSES = {"bce": bce, "dice": dice_loss, "bce_dice": bce_dice_loss, "bce_dice_gap": bce_dice_gap_loss,
          "iou": iou_loss, "bce_iou": bce_iou_loss, "focal": focal_loss, "tversky": tversky_loss}


def metrics() -> list:
    """Fresh metric objects for compile(), each on the mask channel: dice, iou, binary accuracy,
    precision, recall."""
    return [dice_coef, iou_coef, MaskBinaryAccuracy(name="binary_accuracy"), MaskPrecision(name="precision"),
            MaskRecall(name="recall")]
