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
