"""U-Net builders, pure Keras 3 (no TensorFlow calls), so the model code runs on any Keras backend.

`build_unet` is the project's default: 3x3 convolutions with BatchNorm and ReLU, `levels` resolution
levels with `base_filters * 2**i` filters, transposed-convolution upsampling, skip concatenations and
a 1x1 sigmoid head. Fully convolutional: any input whose sides divide by 2**(levels - 1).
Input: float32 RGB in [0, 1] (see `tnbc_pipeline.data.pipeline.model_input`); output: float32
nucleus probability (B, H, W, 1).
"""

from __future__ import annotations

import keras
from keras import layers


def _block(x, filters: int, kernel: int, batch_norm: bool, dropout: float, name: str):
    for j in range(2):
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{j}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{j}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{j}")(x)
        if j == 0 and dropout > 0:
            x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def build_unet(levels: int = 5, base_filters: int = 16, kernel: int = 3, batch_norm: bool = True,
               dropout: float = 0.0, name: str = "unet") -> keras.Model:
    """The default U-Net; see the module docstring. Output layer kept float32 (mixed precision safe)."""
    inputs = keras.Input((None, None, 3), name="image")
    x, skips = inputs, []
    for i in range(levels):
        x = _block(x, base_filters * 2**i, kernel, batch_norm, dropout, f"down{i}")
        if i < levels - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    for i in reversed(range(levels - 1)):
        x = layers.Conv2DTranspose(base_filters * 2**i, 2, strides=2, padding="same", name=f"up{i}")(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips[i]])
        x = _block(x, base_filters * 2**i, kernel, batch_norm, dropout, f"dec{i}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)
