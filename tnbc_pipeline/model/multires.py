"""MultiResUNet (Ibtehaz & Rahman 2020), pure Keras 3: MultiRes blocks instead of the double convolution,
and Res paths instead of plain skip connections.

MultiRes block of width W = alpha * filters (alpha = 1.67): three chained 3x3 convolutions of W/6, W/3
and W/2 filters (a cheap stand-in for 3x3, 5x5 and 7x7 receptive fields) concatenated, plus a 1x1
shortcut of the same total width, added, then BatchNorm + ReLU. Res path of length L: L units of
(3x3 conv + 1x1 shortcut, added), so the skip's shallow encoder features pass through some convolutions
before meeting the deep decoder features; the path at level i has length `levels - 1 - i`.
Input: RGB float32 in [0, 1]; any side divisible by 2 ** (levels - 1).
"""

from __future__ import annotations

import keras
from keras import layers

from tnbc_pipeline.model.unet import BN_MOMENTUM, head

ALPHA = 1.67  # the paper's width multiplier


def _conv_bn(x, filters: int, kernel: int, tag: str, activation: str | None = "relu"):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{tag}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{tag}_bn")(x)
    return layers.Activation(activation, name=f"{tag}_act")(x) if activation else x


def widths(filters: int) -> tuple[int, int, int]:
    """The three convolutions' filters of a MultiRes block for `filters` (W/6, W/3, W/2 of W = 1.67 f)."""
    w = ALPHA * filters
    return max(1, int(w / 6)), max(1, int(w / 3)), max(1, int(w / 2))


def multires_block(x, filters: int, tag: str):
    a, b, c = widths(filters)
    shortcut = _conv_bn(x, a + b + c, 1, f"{tag}_short", activation=None)
    c3 = _conv_bn(x, a, 3, f"{tag}_c3")
    c5 = _conv_bn(c3, b, 3, f"{tag}_c5")
    c7 = _conv_bn(c5, c, 3, f"{tag}_c7")
    out = layers.Concatenate(name=f"{tag}_cat")([c3, c5, c7])
    out = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{tag}_catbn")(out)
    out = layers.Add(name=f"{tag}_add")([shortcut, out])
    return layers.Activation("relu", name=f"{tag}_out")(layers.BatchNormalization(momentum=BN_MOMENTUM,
                                                                                   name=f"{tag}_outbn")(out))


def res_path(x, filters: int, length: int, tag: str):
    for j in range(length):
        shortcut = _conv_bn(x, filters, 1, f"{tag}{j}_short", activation=None)
        x = _conv_bn(x, filters, 3, f"{tag}{j}")
        x = layers.Activation("relu", name=f"{tag}{j}_out")(layers.Add(name=f"{tag}{j}_add")([shortcut, x]))
    return x


def build_multires_unet(levels: int = 5, base_filters: int = 16, outputs: int = 1,
                        name: str = "multires_unet") -> keras.Model:
    """MultiResUNet with `levels` resolution levels and `base_filters * 2**i` filters at level i."""
    inputs = keras.Input((None, None, 3), name="image")
    x, skips = inputs, []
    for i in range(levels):
        x = multires_block(x, base_filters * 2**i, f"down{i}")
        if i < levels - 1:
            skips.append(res_path(x, base_filters * 2**i, levels - 1 - i, f"res{i}_"))
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    for i in reversed(range(levels - 1)):
        x = layers.Conv2DTranspose(base_filters * 2**i, 2, strides=2, padding="same", name=f"up{i}")(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips[i]])
        x = multires_block(x, base_filters * 2**i, f"dec{i}")
    return keras.Model(inputs, head(x, outputs), name=name)
