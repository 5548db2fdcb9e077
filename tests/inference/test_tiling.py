"""Tiled prediction: blending arithmetic, sizes that do not divide, seams, TTA inverses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tnbc_pipeline.inference.tiling import gaussian_weight, predict_image, starts


def pointwise(batch: np.ndarray) -> np.ndarray:
    return batch.mean(-1, keepdims=True)


def local(batch: np.ndarray) -> np.ndarray:
    """A 5x5 box filter per tile, reflecting at the tile edges like a conv net with same padding."""
    return ndimage.uniform_filter(batch.mean(-1), size=(1, 5, 5), mode="reflect")[..., None]


@pytest.mark.parametrize("shape", [(700, 500), (257, 300), (64, 64), (100, 37)])
def test_any_size_and_pointwise_models_match_exactly(shape) -> None:
    image = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
    whole = predict_image(pointwise, image)[..., 0]
    tiled = predict_image(pointwise, image, tile=128, overlap=0.5)[..., 0]
    assert whole.shape == tiled.shape == shape
    np.testing.assert_allclose(tiled, image.mean(-1), atol=1e-6)
    np.testing.assert_allclose(whole, image.mean(-1), atol=1e-6)


def test_tiles_reproduce_the_whole_image_away_from_borders_without_seams() -> None:
    image = ndimage.gaussian_filter(np.random.default_rng(1).random((300, 420, 3), dtype=np.float32), (3, 3, 0))
    whole = predict_image(local, image)[..., 0]
    tiled = predict_image(local, image, tile=96, overlap=0.5)[..., 0]
    inner = (slice(8, -8), slice(8, -8))
    err = np.abs(tiled - whole)[inner]
    assert err.max() < 3e-3 and err.mean() < 1e-5  # tile edges see reflected context, weighted down to 1e-3
    no_blend = np.abs(predict_image(local, image, tile=96, overlap=0.0)[..., 0] - whole)[inner]
    assert no_blend.max() > 3 * err.max()  # abutting tiles show seams; blending removes most of them


def test_tta_undoes_each_transform() -> None:
    image = np.random.default_rng(2).random((128, 128, 3), dtype=np.float32)
    np.testing.assert_allclose(predict_image(pointwise, image, tta=True)[..., 0], image.mean(-1), atol=1e-6)
    rect = image[:, :96]
    np.testing.assert_allclose(predict_image(pointwise, rect, tile=64, tta=True)[..., 0], rect.mean(-1), atol=1e-6)


def test_windows_cover_the_image_and_weights_peak_in_the_centre() -> None:
    assert starts(100, 100, 50) == [0] and starts(300, 128, 64) == [0, 64, 128, 172]
    w = gaussian_weight(64)
    assert w.max() == pytest.approx(1.0) and w[0, 0] == pytest.approx(1e-3) and w.argmax() in (32 * 64 + 32, 31 * 64 + 31)


def test_every_output_channel_is_tiled_and_tta_undone_alike() -> None:
    image = np.random.default_rng(3).random((200, 150, 3), dtype=np.float32)

    def two(batch: np.ndarray) -> np.ndarray:  # channel 0: the mean; channel 1: red only
        return np.concatenate([batch.mean(-1, keepdims=True), batch[..., :1]], -1)

    for kw in ({}, {"tile": 64}, {"tile": 64, "tta": True}):
        out = predict_image(two, image, **kw)
        assert out.shape == (200, 150, 2)
        np.testing.assert_allclose(out[..., 0], image.mean(-1), atol=1e-6)
        np.testing.assert_allclose(out[..., 1], image[..., 0], atol=1e-6)


def test_a_2x40000_image_and_a_1x1_image_are_predicted_whole() -> None:
    """Extreme shapes: tiles along a 2-px strip, a 1-px image padded to the net's multiple and back."""
    strip = np.random.default_rng(0).random((2, 40000, 3)).astype(np.float32)
    out = predict_image(lambda b: b[..., :1], strip, tile=32, multiple=4)
    assert out.shape == (2, 40000, 1) and np.allclose(out[..., 0], strip[..., 0], atol=1e-6)
    dot = np.full((1, 1, 3), 0.25, np.float32)
    assert predict_image(lambda b: b[..., :1], dot, tile=32, multiple=4).tolist() == [[[0.25]]]
