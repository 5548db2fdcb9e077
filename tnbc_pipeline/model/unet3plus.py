"""UNet 3+ (Huang et al. 2020): full-scale skip connections, pure Keras 3.

Encoder: `levels` stages of two 3x3 conv + BN + ReLU with base_filters * 2**i channels, 2x2 max pooling
between them. Every decoder stage i (deepest first) aggregates all scales: each shallower encoder map is
max-pooled down to scale i, the encoder map of scale i is taken as is, and every deeper decoder map (and
the bottom encoder map) is upsampled bilinearly to scale i; each of these `levels` inputs is projected to
`base_filters` channels by a 3x3 conv + BN + ReLU, concatenated, and fused by a 3x3 conv + BN + ReLU into
levels * base_filters channels. The project's head reads the finest decoder stage. Deep supervision (a head
per stage) is a training aid of the paper that is not offered: every model here has one output map.
Stride: 2 ** (levels - 1), like the U-Nets.
"""

from __future__ import annotations

import keras
from keras import layers

from tnbc_pipeline.model.backbones import BilinearUp
from tnbc_pipeline.model.unet import BN_MOMENTUM, head


def _conv(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_unet3plus(levels: int = 5, base_filters: int = 16, outputs: int = 1) -> keras.Model:
    """(B, H, W, 3) float32 in [0, 1] -> (B, H, W, outputs) sigmoid; H and W divisible by 2 ** (levels - 1)."""
    inputs = keras.Input((None, None, 3), name="image")
    enc, x = [], inputs
    for i in range(levels):
        if i:
            x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
        x = _conv(_conv(x, base_filters * 2**i, f"enc{i}a"), base_filters * 2**i, f"enc{i}b")
        enc.append(x)
    dec = {levels - 1: enc[-1]}  # the bottom encoder stage is the deepest "decoder" map
    for i in range(levels - 2, -1, -1):
        parts = []
        for j in range(levels):
            tag = f"dec{i}_from{j}"
            if j < i:  # shallower encoder maps, pooled down to scale i
                src = layers.MaxPooling2D(2 ** (i - j), name=f"{tag}_pool")(enc[j])
            elif j == i:
                src = enc[i]
            else:  # deeper decoder maps, upsampled to scale i
                src = BilinearUp(2 ** (j - i), name=f"{tag}_up")(dec[j])
            parts.append(_conv(src, base_filters, tag))
        dec[i] = _conv(layers.Concatenate(name=f"dec{i}_cat")(parts), levels * base_filters, f"dec{i}_fuse")
    return keras.Model(inputs, head(dec[0], outputs), name="unet3plus")
