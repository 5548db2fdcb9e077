"""Macenko stain normalisation as the model's first layer: a known answer on an image made from known
stains, the no-tissue pass-through, the model around it, and identities that stay what they were."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tests.conftest import learns_and_reloads
from tnbc_pipeline.config import ModelConfig


def _unit(v: list[float]) -> np.ndarray:
    return np.asarray(v, np.float64) / np.linalg.norm(v)


def stained(h: np.ndarray, e: np.ndarray, rng: np.random.Generator, side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An RGB float32 (1, side, side, 3) image rendered by Beer-Lambert from stain vectors h, e, and its
    concentrations (side², 2): a fifth pure H, a fifth pure E, two fifths mixed, a fifth white. The
    concentrations take 4 levels up to 2.0 (>= 5% of pixels at 2.0 for each stain), so every percentile the
    method takes is unambiguous: the stains sit at the extreme angles, the 99th percentile is 2.0."""
    n = side * side
    levels = np.array([0.8, 1.2, 1.6, 2.0])
    conc = np.zeros((n, 2))
    order = rng.permutation(n)
    pure_h, pure_e, mixed = order[: n // 5], order[n // 5: 2 * n // 5], order[2 * n // 5: 4 * n // 5]
    conc[pure_h, 0] = rng.choice(levels, len(pure_h))
    conc[pure_e, 1] = rng.choice(levels, len(pure_e))
    conc[mixed] = rng.choice(levels, (len(mixed), 2))
    image = np.exp(-(conc @ np.stack([h, e]))).reshape(1, side, side, 3).astype(np.float32)
    return image, conc


def test_an_image_of_known_stains_maps_exactly_onto_the_reference() -> None:
    from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

    from tnbc_pipeline.model.stain_norm import REF_MAX, REF_STAINS, MacenkoNormalize

    layer = MacenkoNormalize()
    rng = np.random.default_rng(0)
    batch, wanted = [], []
    # two images of one batch, different stains and strengths: each is normalised on its own statistics
    for h, e, strength in ((_unit([0.65, 0.70, 0.29]), _unit([0.30, 0.85, 0.43]), 1.0),
                           (_unit([0.55, 0.75, 0.37]), _unit([0.25, 0.80, 0.55]), 0.6)):
        image, conc = stained(h * strength, e * strength, rng)
        batch.append(image)
        # the method recovers unit stain vectors, so concentrations scale by `strength`; its 99th percentile
        # is 2.0 * strength, mapped onto REF_MAX
        wanted.append(np.exp(-(conc * np.asarray(REF_MAX) / 2.0) @ np.asarray(REF_STAINS)).reshape(image.shape))
    out = np.asarray(layer(np.concatenate(batch)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.concatenate(wanted), atol=1e-5)
    # white (no tissue) and tissue of one colour (one stain twice) pass unchanged, whatever else is in the batch
    white = np.ones((1, 64, 64, 3), np.float32)
    flat = np.full((1, 64, 64, 3), 0.5, np.float32) * np.asarray([0.6, 0.3, 0.7], np.float32)
    out = np.asarray(layer(np.concatenate([white, flat, batch[0]])))
    np.testing.assert_array_equal(out[:2], np.concatenate([white, flat]))
    np.testing.assert_allclose(out[2], wanted[0][0], atol=1e-5)


def test_a_model_behind_the_normaliser_trains_saves_and_reloads_in_mixed_precision(tmp_path: Path) -> None:
    from tnbc_pipeline.tf_env import tf  # noqa: F401

    import keras

    from tnbc_pipeline.model.registry import build

    plain = ModelConfig(levels=3, base_filters=4, interior=1)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = build(dataclasses.replace(plain, stain_norm="macenko"))
        assert model.get_layer("macenko").compute_dtype == "float32"  # its maths in float32 under bf16
        assert model.count_params() == build(plain).count_params()  # no weights of its own
        x = stained(_unit([0.65, 0.70, 0.29]), _unit([0.30, 0.85, 0.43]), np.random.default_rng(1))[0]
        learns_and_reloads(model, x.repeat(2, axis=0), tmp_path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)  # as eval loads it: global float32
    assert again.get_layer("macenko").compute_dtype == "float32"
    assert np.allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
