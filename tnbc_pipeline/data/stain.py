"""Stain augmentation in haematoxylin-eosin-DAB space (HED jitter, Tellez et al. 2018), numpy and TensorFlow.

Colour deconvolution is scikit-image's `rgb2hed` definition (Ruifrok & Johnston's stain matrix): RGB in
[0, 1] -> optical density OD = -ln(max(RGB, 1e-6)) -> stain concentrations OD @ hed_from_rgb. The jitter
scales each of H, E and D by alpha ~ U(1 - sigma, 1 + sigma) and shifts it by beta ~ U(-sigma, sigma)
(optical-density units, as Tellez), then maps back with rgb_from_hed. sigma = 0 is the identity (up to
uint8 rounding); 0.05 is Tellez's "light", 0.2 a strong jitter. The numpy version renders the offline
`stain` variants, the TensorFlow version jitters training crops on the fly; both are the same formula.
"""

from __future__ import annotations

import numpy as np
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

EPS = 1e-6  # scikit-image's floor before the log: black maps to a finite optical density
HED_FROM_RGB = np.asarray(hed_from_rgb, np.float64)  # OD (.., 3) @ this -> stain concentrations (.., 3)
RGB_FROM_HED = np.asarray(rgb_from_hed, np.float64)


def jitter_np(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """RGB float (.., 3) in [0, 1] -> RGB float64 in [0, 1] with stain concentrations * alpha + beta
    (alpha, beta: (3,) for H, E, D)."""
    od = -np.log(np.maximum(rgb, EPS))
    stains = od @ HED_FROM_RGB
    return np.clip(np.exp(-((stains * alpha + beta) @ RGB_FROM_HED)), 0.0, 1.0)


def draw(rng: np.random.Generator, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta), each (3,), for one image."""
    return rng.uniform(1 - sigma, 1 + sigma, 3), rng.uniform(-sigma, sigma, 3)


def stain_jitter(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> the same image with its stains jittered, uint8 (the offline `stain` op)."""
    alpha, beta = draw(rng, sigma)
    return np.round(jitter_np(image.astype(np.float64) / 255.0, alpha, beta) * 255.0).astype(np.uint8)


def jitter_tf(rgb, alpha, beta):
    """`jitter_np` in TensorFlow: RGB float32 (.., 3) in [0, 1], alpha and beta float32 (3,)."""
    from tnbc_pipeline.tf_env import tf

    od = -tf.math.log(tf.maximum(rgb, EPS))
    stains = tf.tensordot(od, tf.constant(HED_FROM_RGB, tf.float32), 1)
    out = tf.exp(-tf.tensordot(stains * alpha + beta, tf.constant(RGB_FROM_HED, tf.float32), 1))
    return tf.clip_by_value(out, 0.0, 1.0)


def stain_jitter_tf(image, seed, sigma: float):
    """The input pipeline's online jitter: RGB uint8 (H, W, 3) and an int64 (2,) stateless seed ->
    jittered RGB uint8 (alpha, beta drawn from the seed, as `draw` does from a generator)."""
    from tnbc_pipeline.tf_env import tf

    alpha_seed, beta_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    alpha = tf.random.stateless_uniform([3], alpha_seed, 1 - sigma, 1 + sigma)
    beta = tf.random.stateless_uniform([3], beta_seed, -sigma, sigma)
    out = jitter_tf(tf.cast(image, tf.float32) / 255.0, alpha, beta)
    return tf.cast(tf.round(out * 255.0), tf.uint8)
