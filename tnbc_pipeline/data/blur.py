"""Focus augmentation: a Gaussian blur of random strength on each training crop, on the fly (`blur_jitter`).

The release's patients differ in focus as much as in stain: the variance of the Laplacian of the grey image
(a sharpness measure) averages 153-394 per patient, and blurring the sharpest patient (06) by sigma 0.5 px
already brings it from 394 to 214 (BENCHMARKS.md §1u). `blur_jitter = S` blurs each training crop with
sigma ~ U(0, S) px (separable Gaussian, taps out to RADIUS_SIGMAS x S, edges mirrored as scipy.ndimage's
"reflect"); the mask is untouched, since blurring moves no nucleus. sigma = 0 is the identity.
Off by default: at S = 1.0 the 4-fold CV lost PQ on the blurriest patients (04, 10: -0.04; §1u).
"""

from __future__ import annotations

import math

RADIUS_SIGMAS = 3.0  # kernel half-width in units of the largest sigma: the tails past 3 sd hold 0.3% of the mass
SIGMA_FLOOR = 1e-3  # sigmas below this blur nothing: the kernel is a unit impulse (no division by zero)


def radius(max_sigma: float) -> int:
    """The kernel half-width in px for sigmas up to `max_sigma` (>= 1 so the kernel has a shape)."""
    return max(1, math.ceil(RADIUS_SIGMAS * max_sigma))


def gaussian_kernel_tf(sigma, half_width: int):
    """Normalised 1-D Gaussian float32 (2 * half_width + 1,) of a scalar float32 tensor `sigma` (px)."""
    from tnbc_pipeline.tf_env import tf

    x = tf.range(-half_width, half_width + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(x / tf.maximum(sigma, SIGMA_FLOOR)))
    return weights / tf.reduce_sum(weights)


def gaussian_blur_tf(image, sigma, half_width: int):
    """Float32 (H, W, C) blurred by a separable Gaussian of scalar `sigma` px; edges mirrored (SYMMETRIC
    padding, which is scipy.ndimage's "reflect"). Returns float32 (H, W, C)."""
    from tnbc_pipeline.tf_env import tf

    kernel = gaussian_kernel_tf(sigma, half_width)
    channels = tf.shape(image)[-1]
    padded = tf.pad(image[tf.newaxis], [[0, 0], [half_width, half_width], [half_width, half_width], [0, 0]],
                    mode="SYMMETRIC")
    rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])  # (k, 1, C, 1): along H
    cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])  # (1, k, C, 1): along W
    out = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")
    return out[0]


def blur_jitter_tf(image, seed, max_sigma: float):
    """The input pipeline's online blur: RGB uint8 (H, W, 3) and an int64 (2,) stateless seed -> the crop
    blurred by sigma ~ U(0, max_sigma) px drawn from the seed, RGB uint8 (H, W, 3)."""
    from tnbc_pipeline.tf_env import tf

    sigma = tf.random.stateless_uniform([], seed, 0.0, max_sigma)
    out = gaussian_blur_tf(tf.cast(image, tf.float32), sigma, radius(max_sigma))
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
