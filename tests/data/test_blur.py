"""Online focus augmentation: the Gaussian blur equals scipy.ndimage's, sigma 0 is the identity, and in the
input pipeline it blurs images only, seeded like the crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, RecordsConfig, TrainConfig
from tnbc_pipeline.data.blur import blur_jitter_tf, gaussian_blur_tf, radius
from tnbc_pipeline.data.synth import synth_case
from tnbc_pipeline.errors import TnbcError


def _image() -> np.ndarray:
    return synth_case(np.random.default_rng(3), size=48)[0]


@pytest.mark.parametrize("sigma", [0.4, 1.0, 1.7])
def test_the_blur_is_scipys_gaussian_filter(sigma: float) -> None:
    from scipy.ndimage import gaussian_filter

    from tnbc_pipeline.tf_env import tf

    image = _image().astype(np.float32)
    half = radius(2.0)  # the kernel of a run with blur_jitter 2.0, whatever sigma this crop drew
    ours = gaussian_blur_tf(tf.constant(image), tf.constant(sigma, tf.float32), half).numpy()
    theirs = gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect", radius=(half, half, 0))
    assert ours.shape == image.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-3  # float32 sums of 255-scale values


def test_sigma_zero_is_the_identity_and_a_flat_image_stays_flat() -> None:
    from tnbc_pipeline.tf_env import tf

    image = _image()
    seed = tf.constant([0, 1], tf.int64)
    assert np.array_equal(blur_jitter_tf(tf.constant(image), seed, 1e-6).numpy(), image)
    flat = np.full((20, 20, 3), 137, np.uint8)
    assert np.array_equal(blur_jitter_tf(tf.constant(flat), seed, 3.0).numpy(), flat)  # the kernel sums to 1


def test_each_crop_is_blurred_by_the_sigma_its_seed_draws() -> None:
    from tnbc_pipeline.tf_env import tf

    image = tf.constant(_image())

    def sharpness(x: np.ndarray) -> float:  # mean absolute difference of neighbouring pixels
        return float(np.abs(np.diff(x.astype(np.float64), axis=1)).mean())

    sigmas = []
    for k in range(6):
        seed = tf.constant([0, k], tf.int64)
        sigma = tf.random.stateless_uniform([], seed, 0.0, 2.0)  # the draw blur_jitter_tf makes from this seed
        expected = np.clip(np.round(gaussian_blur_tf(tf.cast(image, tf.float32), sigma, radius(2.0)).numpy()), 0, 255)
        out = blur_jitter_tf(image, seed, 2.0).numpy()
        assert np.array_equal(out, expected.astype(np.uint8)) and np.array_equal(out, blur_jitter_tf(image, seed, 2.0))
        sigmas.append(float(sigma))
        if sigma > 0.5:
            assert sharpness(out) < sharpness(image.numpy())
    assert len(set(sigmas)) == 6 and max(sigmas) > 0.5  # seeds draw apart, and some draw a visible blur


def test_the_setting_is_checked() -> None:
    assert TrainConfig(blur_jitter=1.0).blur_jitter == 1.0
    with pytest.raises(TnbcError, match=r"blur_jitter must be in \[0, 8\] px, got -0.5"):
        TrainConfig(blur_jitter=-0.5)


def test_online_blur_changes_images_only_and_is_seeded(release_root: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.data.dataset import build_dataset
    from tnbc_pipeline.data.pipeline import make_dataset
    from tnbc_pipeline.data.records import build_records

    cfg = DatasetConfig(augment=AugmentConfig(alpha=(), sigma=(), rotations=(90.0,), distort=(), shrink=()))
    build_dataset(release_root, tmp_path / "TNBC", cfg, workers=1, progress=False)
    build_records(tmp_path / "TNBC", None, RecordsConfig(), progress=False)
    records = tmp_path / "TNBC" / "tfrecords"

    def batch(blur: float, seed: int = 0, stain: float = 0.05):
        x, y = next(iter(make_dataset(records, "train", training=True, batch_size=4, patch=32, seed=seed,
                                      stain_jitter=stain, blur_jitter=blur)))
        return x.numpy(), y.numpy()

    plain, blurred, again, other = batch(0.0), batch(1.5), batch(1.5), batch(1.5, seed=1)
    assert np.array_equal(plain[1], blurred[1])  # same crops, same masks: the blur moves no nucleus
    assert not np.array_equal(plain[0], blurred[0])
    assert np.array_equal(blurred[0], again[0]) and not np.array_equal(blurred[0], other[0])
    # the blur draws from its own stream: the stain jitter of each crop is the one it gets without the blur
    assert np.array_equal(batch(1e-6)[0], plain[0])
