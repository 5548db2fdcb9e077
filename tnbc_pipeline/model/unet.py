"""U-Net builders, pure Keras 3 (no TensorFlow calls), so the model code runs on any Keras backend.

`build_unet_seed` is the old system's "slightly flexible" U-Net, layer for layer (see REFERENCE.md §1),
so its configs reproduce its models and parameter counts. `build_unet` is the project's default: 3x3 convolutions with BatchNorm and ReLU, `levels` resolution
levels with `base_filters * 2**i` filters, transposed-convolution upsampling, skip concatenations and
a 1x1 sigmoid head. Fully convolutional: any input whose sides divide by 2**(levels - 1).
Input: float32 RGB in [0, 1] (see `tnbc_pipeline.data.pipeline.model_input`); output: float32
probabilities (B, H, W, outputs): channel 0 the nucleus mask, channel 1 (when asked) the nucleus interior.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

# Keras' default 0.99 leaves the inference statistics ~45% at their initial values after 80 steps, so
# short CPU runs validate far worse than they train; 0.9 settles within ~30 steps.
BN_MOMENTUM = 0.9


def _block(x, filters: int, kernel: int, batch_norm: bool, dropout: float, name: str):
    for j in range(2):
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{j}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{j}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{j}")(x)
        if j == 0 and dropout > 0:
            x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def head(x, outputs: int):
    """The output head every model shares: a float32 1x1 sigmoid convolution, one channel per output."""
    return layers.Conv2D(outputs, 1, activation="sigmoid", dtype="float32", name="mask")(x)


def attention_gate(x, skip, filters: int, tag: str):
    """Additive attention gate (Oktay et al. 2018): the decoder signal `x` and the skip, each projected by a
    1x1 conv to `filters // 2`, summed, ReLU, 1x1 conv to one sigmoid coefficient per pixel that scales the
    skip. `x` has the skip's resolution (it is gated after the upsampling)."""
    inter = max(1, filters // 2)
    theta = layers.Conv2D(inter, 1, name=f"{tag}_theta")(skip)
    phi = layers.Conv2D(inter, 1, name=f"{tag}_phi")(x)
    act = layers.Activation("relu", name=f"{tag}_relu")(layers.Add(name=f"{tag}_add")([theta, phi]))
    alpha = layers.Conv2D(1, 1, activation="sigmoid", name=f"{tag}_alpha")(act)
    return layers.Multiply(name=f"{tag}_gated")([skip, alpha])


def _assemble(levels: int, base_filters: int, block: Callable, name: str, outputs: int = 1,
              gate: Callable | None = None) -> keras.Model:
    """The U shape the U-Nets share: `block(x, filters, level, tag)` per level on the way down (max-pool
    between levels) and up (2x2 transposed conv, skip concatenation -- the skip passed through
    `gate(x, skip, filters, tag)` first when given), then a float32 1x1 sigmoid head."""
    inputs = keras.Input((None, None, 3), name="image")
    x, skips = inputs, []
    for i in range(levels):
        x = block(x, base_filters * 2**i, i, f"down{i}")
        if i < levels - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    for i in reversed(range(levels - 1)):
        x = layers.Conv2DTranspose(base_filters * 2**i, 2, strides=2, padding="same", name=f"up{i}")(x)
        skip = gate(x, skips[i], base_filters * 2**i, f"gate{i}") if gate else skips[i]
        x = layers.Concatenate(name=f"skip{i}")([x, skip])
        x = block(x, base_filters * 2**i, i, f"dec{i}")
    return keras.Model(inputs, head(x, outputs), name=name)


def build_unet(levels: int = 5, base_filters: int = 16, kernel: int = 3, batch_norm: bool = True,
               dropout: float = 0.0, name: str = "unet", outputs: int = 1) -> keras.Model:
    """The default U-Net; see the module docstring."""
    return _assemble(levels, base_filters,
                     lambda x, filters, level, tag: _block(x, filters, kernel, batch_norm, dropout, tag), name,
                     outputs)


def build_attention_unet(levels: int = 5, base_filters: int = 16, kernel: int = 3, batch_norm: bool = True,
                         dropout: float = 0.0, name: str = "attention_unet", outputs: int = 1) -> keras.Model:
    """The default U-Net with an additive attention gate on every skip connection (Oktay et al. 2018)."""
    return _assemble(levels, base_filters,
                     lambda x, filters, level, tag: _block(x, filters, kernel, batch_norm, dropout, tag), name,
                     outputs, gate=attention_gate)


def build_unet_seed(num_layers: int = 5, base_filters: int = 16, base_kernels: int = 3, dilation: int = 1,
                    dropout_rate: float = 0.05, normalization: bool = False, name: str = "unet_seed",
                    outputs: int = 1) -> keras.Model:
    """The old "slightly flexible" U-Net. Level i: `base_filters * 2**i` filters, kernel `base_kernels`
    shrinking by 2 per level to a floor of 3, dilation falling by 1 per level to 1; block =
    Conv -> [BN] -> Dropout(dropout_rate * i) -> Conv -> [BN] (ReLU, he_normal, biases); max-pool between
    levels; the decoder mirrors kernels and dilations with 2x2 transposed convolutions. Its input
    scaling (x / 255 in a Lambda layer) is not part of the model here: `model_input` scales for all models.
    """
    kernels = [max(3, base_kernels - 2 * i) for i in range(num_layers)]
    dilations = [max(1, dilation - i) for i in range(num_layers)]

    def block(x, filters: int, kernel: int, rate: int, drop: float, tag: str):
        for j in range(2):
            x = layers.Conv2D(filters, kernel, activation="relu", kernel_initializer="he_normal",
                              dilation_rate=rate, padding="same", name=f"{tag}_conv{j}")(x)
            if normalization:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{tag}_bn{j}")(x)
            if j == 0:
                x = layers.Dropout(drop, name=f"{tag}_drop")(x)
        return x

    return _assemble(num_layers, base_filters,
                     lambda x, filters, level, tag: block(x, filters, kernels[level], dilations[level],
                                                          dropout_rate * level, tag), name, outputs)
