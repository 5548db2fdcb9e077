"""The default U-Net: fully convolutional shapes, output range, and its parameter count."""

from __future__ import annotations

import numpy as np


def test_default_unet_shapes_range_and_size() -> None:
    from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

    from tnbc_pipeline.model.unet import build_unet

    model = build_unet()
    for side in (64, 96):
        out = model.predict(np.random.default_rng(0).random((2, side, side, 3), dtype=np.float32), verbose=0)
        assert out.shape == (2, side, side, 1) and 0 <= out.min() and out.max() <= 1
    # 5 levels, base 16, 3x3, BatchNorm: counted by hand from the layer list (convs + BN + transposed convs).
    convs = sum(9 * cin * cout for cin, cout in [(3, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 128),
                                                 (128, 128), (128, 256), (256, 256), (256, 128), (128, 128),
                                                 (128, 64), (64, 64), (64, 32), (32, 32), (32, 16), (16, 16)])
    bn = 4 * 2 * (16 + 32 + 64 + 128 + 256 + 128 + 64 + 32 + 16)
    ups = sum(4 * cin * cout + cout for cin, cout in [(256, 128), (128, 64), (64, 32), (32, 16)])
    head = 16 + 1
    assert model.count_params() == convs + bn + ups + head


def _old_count(levels: int, base: int, k0: int) -> int:
    """Parameters of the old "slightly flexible" U-Net, counted from its definition (REFERENCE.md §1)."""
    kernels = [max(3, k0 - 2 * i) for i in range(levels)]
    n, prev = 0, 3
    for i in range(levels):
        f, k = base * 2**i, kernels[i]
        n += k * k * prev * f + f + k * k * f * f + f
        prev = f
    for level in reversed(range(levels - 1)):
        f, k = base * 2**level, kernels[level]
        n += 4 * prev * f + f + k * k * 2 * f * f + f + k * k * f * f + f  # up-conv, conv(concat), conv
        prev = f
    return n + prev + 1  # 1x1 sigmoid head


def test_unet_seed_reproduces_the_old_tnbc_model() -> None:
    from tnbc_pipeline.tf_env import tf  # noqa: F401

    from tnbc_pipeline.model.unet import build_unet_seed

    model = build_unet_seed(num_layers=7, base_filters=16, base_kernels=5, dilation=1, dropout_rate=0.05)
    assert model.count_params() == _old_count(7, 16, 5) == 31_127_153  # the TNBC config: 640^2, 7 levels, 5x5, base 16
    kernels = [layer.kernel_size for layer in model.layers if layer.name.endswith("_conv0")]
    assert kernels[:7] == [(5, 5)] + [(3, 3)] * 6 and kernels[-1] == (5, 5)  # decoder mirrors the encoder
    drops = {layer.name: layer.rate for layer in model.layers if layer.name.endswith("_drop")}
    assert drops["down0_drop"] == 0 and abs(drops["down6_drop"] - 0.3) < 1e-9 and abs(drops["dec5_drop"] - 0.25) < 1e-9
    small = build_unet_seed(num_layers=4, base_filters=4, base_kernels=7, dilation=3, normalization=True)
    rates = [layer.dilation_rate for layer in small.layers if layer.name.endswith("_conv0")]
    assert rates == [(3, 3), (2, 2), (1, 1), (1, 1), (1, 1), (2, 2), (3, 3)]
    out = small.predict(np.zeros((1, 64, 48, 3), np.float32), verbose=0)
    assert out.shape == (1, 64, 48, 1)
