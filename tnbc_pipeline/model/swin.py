"""Swin-UNet (Cao et al. 2021): Swin Transformer blocks with shifted windows in a U-shape, pure Keras 3.

    patch embedding   4x4 conv, stride 4, to C = 6 * base_filters channels (96 at base 16, Swin-T's width) + LN
    encoder           `levels - 1` resolutions; at each, two Swin blocks (window attention, then shifted-window
                      attention, each with a 4x MLP) of 3 * 2**i heads, then patch merging (2x2 neighbours
                      concatenated, LN, linear to 2x the channels) except at the bottleneck
    decoder           patch expanding (linear to 2x channels, rearranged to 2x the resolution at half of them),
                      concatenation with the encoder's map of that resolution, a linear projection, two Swin blocks
    output            LN, a 4x patch expanding back to the input resolution, the project's head

Window WINDOW = 8 pixels of feature map; relative position bias per head (Liu et al. 2021); the shifted
blocks roll the map by half a window and mask attention across the rolled seams. Every map must divide
into windows, so input sides must divide by the stride 4 * 2**(levels - 2) * WINDOW (256 at levels 5).
The layers below are registered Keras layers (no Lambda), so `safe_mode` loading works.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from tnbc_pipeline.model.unet import head

register = keras.saving.register_keras_serializable(package="tnbc")
WINDOW = 8
MASKED = -100.0  # added to the attention logits of pairs from different regions of a rolled window


def _partition(x, w: int, channels: int):
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C) windows."""
    shape = ops.shape(x)
    x = ops.reshape(x, (-1, shape[1] // w, w, shape[2] // w, w, channels))
    return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, w * w, channels))


def _merge(x, w: int, height, width, channels: int):
    """`_partition`'s inverse: (B * nH * nW, w*w, C) -> (B, H, W, C)."""
    x = ops.reshape(x, (-1, height // w, width // w, w, w, channels))
    return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, height, width, channels))


def _relative_index(w: int) -> np.ndarray:
    """(w*w * w*w,) index into the (2w-1)**2 relative-position table for every (query, key) pair of a window."""
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)
    return (rel[0] * (2 * w - 1) + rel[1]).reshape(-1).astype("int32")


@register
class SwinBlock(layers.Layer):
    """(B, H, W, C) -> (B, H, W, C): x + WindowAttention(LN(x)), then + MLP(LN(.)); shifted when `shift` > 0."""

    def __init__(self, dim: int, heads: int, window: int = WINDOW, shift: int = 0, mlp_ratio: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dim, self.heads, self.window, self.shift, self.mlp_ratio = dim, heads, window, shift, mlp_ratio
        policy = self.dtype_policy  # sublayers take the block's policy, not the global one at load time
        self.norm1 = layers.LayerNormalization(epsilon=1e-5, name="norm1", dtype=policy)
        self.qkv = layers.Dense(3 * dim, name="qkv", dtype=policy)
        self.proj = layers.Dense(dim, name="proj", dtype=policy)
        self.norm2 = layers.LayerNormalization(epsilon=1e-5, name="norm2", dtype=policy)
        self.fc1 = layers.Dense(mlp_ratio * dim, activation="gelu", name="fc1", dtype=policy)
        self.fc2 = layers.Dense(dim, name="fc2", dtype=policy)
        self.index = _relative_index(window)

    def build(self, input_shape) -> None:
        w, n = self.window, self.window * self.window
        self.bias_table = self.add_weight(shape=((2 * w - 1) ** 2, self.heads), name="relative_position_bias",
                                          initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        for layer, shape in ((self.norm1, input_shape), (self.norm2, input_shape), (self.qkv, (None, n, self.dim)),
                             (self.proj, (None, n, self.dim)), (self.fc1, input_shape),
                             (self.fc2, (*input_shape[:-1], self.mlp_ratio * self.dim))):
            layer.build(shape)

    def _shift_mask(self, height, width):
        """(nW, N, N): MASKED between pixels of one rolled window that came from different image regions."""
        w, s = self.window, self.shift

        def region(n):  # 0, 1, 2 along one axis of the rolled map
            pos = ops.arange(n)
            return ops.cast(pos >= n - w, "int32") + ops.cast(pos >= n - s, "int32")

        ids = region(height)[:, None] * 3 + region(width)[None, :]
        win = ops.reshape(_partition(ops.cast(ids[None, :, :, None], "float32"), w, 1), (-1, w * w))
        return ops.where(ops.not_equal(win[:, :, None], win[:, None, :]), MASKED, 0.0)

    def call(self, x):
        shape = ops.shape(x)
        height, width = shape[1], shape[2]
        w, n, d = self.window, self.window * self.window, self.dim // self.heads
        h = self.norm1(x)
        if self.shift:
            h = ops.roll(ops.roll(h, -self.shift, axis=1), -self.shift, axis=2)
        win = _partition(h, w, self.dim)
        qkv = ops.transpose(ops.reshape(self.qkv(win), (-1, n, 3, self.heads, d)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0] * (d ** -0.5), qkv[1], qkv[2]
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (nB, heads, N, N)
        bias = ops.transpose(ops.reshape(ops.take(self.bias_table, self.index, axis=0), (n, n, self.heads)), (2, 0, 1))
        logits = logits + ops.cast(bias, logits.dtype)[None]
        if self.shift:
            mask = self._shift_mask(height, width)
            windows = ops.shape(mask)[0]
            logits = ops.reshape(logits, (-1, windows, self.heads, n, n)) + ops.cast(mask, logits.dtype)[None, :, None]
            logits = ops.reshape(logits, (-1, self.heads, n, n))
        out = ops.matmul(ops.softmax(logits, axis=-1), v)
        out = self.proj(ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, n, self.dim)))
        out = _merge(out, w, height, width, self.dim)
        if self.shift:
            out = ops.roll(ops.roll(out, self.shift, axis=1), self.shift, axis=2)
        x = x + out
        return x + self.fc2(self.fc1(self.norm2(x)))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "window": self.window,
                "shift": self.shift, "mlp_ratio": self.mlp_ratio}


@register
class PatchMerging(layers.Layer):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): each 2x2 neighbourhood concatenated (4C), LN, linear to 2C."""

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm", dtype=self.dtype_policy)
        self.reduce = layers.Dense(2 * dim, use_bias=False, name="reduce", dtype=self.dtype_policy)

    def build(self, input_shape) -> None:
        self.norm.build((None, None, None, 4 * self.dim))
        self.reduce.build((None, None, None, 4 * self.dim))

    def call(self, x):
        shape = ops.shape(x)
        x = ops.reshape(x, (-1, shape[1] // 2, 2, shape[2] // 2, 2, self.dim))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, shape[1] // 2, shape[2] // 2, 4 * self.dim))
        return self.reduce(self.norm(x))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim}


@register
class PatchExpand(layers.Layer):
    """(B, H, W, C_in) -> (B, fH, fW, dim): linear to f*f*dim channels, rearranged into f x f pixels, LN."""

    def __init__(self, dim: int, factor: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dim, self.factor = dim, factor
        self.expand = layers.Dense(factor * factor * dim, use_bias=False, name="expand", dtype=self.dtype_policy)
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm", dtype=self.dtype_policy)

    def build(self, input_shape) -> None:
        self.expand.build(input_shape)
        self.norm.build((None, None, None, self.dim))

    def call(self, x):
        shape, f = ops.shape(x), self.factor
        x = ops.reshape(self.expand(x), (-1, shape[1], shape[2], f, f, self.dim))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, shape[1] * f, shape[2] * f, self.dim))
        return self.norm(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "factor": self.factor}


def build_swin_unet(levels: int = 5, base_filters: int = 16, outputs: int = 1) -> keras.Model:
    """(B, H, W, 3) float32 in [0, 1] -> (B, H, W, outputs) sigmoid; H, W divisible by ModelConfig.stride."""
    if levels < 2:
        raise ValueError("swin_unet needs levels >= 2")
    dim = 6 * base_filters
    inputs = keras.Input((None, None, 3), name="image")
    x = layers.Conv2D(dim, 4, strides=4, name="patch_embed")(inputs)
    x = layers.LayerNormalization(epsilon=1e-5, name="patch_norm")(x)
    skips = []
    for i in range(levels - 1):
        c, heads = dim * 2**i, 3 * 2**i
        x = SwinBlock(c, heads, name=f"enc{i}_w")(x)
        x = SwinBlock(c, heads, shift=WINDOW // 2, name=f"enc{i}_sw")(x)
        if i < levels - 2:
            skips.append(x)
            x = PatchMerging(c, name=f"enc{i}_merge")(x)
    for i in range(levels - 3, -1, -1):
        c, heads = dim * 2**i, 3 * 2**i
        x = PatchExpand(c, 2, name=f"dec{i}_expand")(x)
        x = layers.Dense(c, name=f"dec{i}_concat_proj")(layers.Concatenate(name=f"dec{i}_cat")([x, skips[i]]))
        x = SwinBlock(c, heads, name=f"dec{i}_w")(x)
        x = SwinBlock(c, heads, shift=WINDOW // 2, name=f"dec{i}_sw")(x)
    x = layers.LayerNormalization(epsilon=1e-5, name="out_norm")(x)
    x = PatchExpand(dim, 4, name="out_expand")(x)
    return keras.Model(inputs, head(x, outputs), name="swin_unet")
