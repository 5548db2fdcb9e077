"""Models on `keras.applications` encoders, pure Keras 3: `efficient_unet` and `deeplabv3plus`.

The encoders are built with `weights=None` by default (`encoder_weights = "none"`); "imagenet" lets Keras
download its weights on the user's machine (tests and CI never do). Input is the project's RGB float32 in
[0, 1]; each encoder's own preprocessing is applied inside the model (EfficientNet rescales and
normalises internally from [0, 255]; MobileNetV2 takes [-1, 1]).

    efficient_unet   EfficientNetB0 encoder; a U-Net decoder (2x2 transposed conv, skip concatenation,
                     two 3x3 conv + BN + ReLU) over its 1/16, 1/8, 1/4, 1/2 features; stride 32
    deeplabv3plus    MobileNetV2 encoder truncated at output stride 16; ASPP (1x1, 3x3 at rates 6/12/18,
                     image pooling) -> 256 channels, x4 bilinear, concatenated with 48 channels of the 1/4
                     features, two 3x3 convolutions, the head, x4 bilinear (Chen et al. 2018); stride 16
"""

from __future__ import annotations

import keras
from keras import layers, ops

from tnbc_pipeline.model.unet import BN_MOMENTUM, head

register = keras.saving.register_keras_serializable(package="tnbc")
EFFICIENT_SKIPS = ("block6a_expand_activation", "block4a_expand_activation", "block3a_expand_activation",
                   "block2a_expand_activation")  # 1/16, 1/8, 1/4, 1/2 of the input
EFFICIENT_TOP = "top_activation"  # 1/32
MOBILE_HIGH, MOBILE_LOW = "block_13_expand_relu", "block_3_expand_relu"  # 1/16 and 1/4


@register
class ImagePooling(layers.Layer):
    """ASPP's image-level branch: the mean over H and W, broadcast back to (B, H, W, C) of any size."""

    def call(self, x):
        return ops.broadcast_to(ops.mean(x, axis=(1, 2), keepdims=True), ops.shape(x))


@register
class BilinearUp(layers.Layer):
    """Bilinear upsampling by an integer factor (half-pixel centres, edges clamped) for inputs of any size:
    Keras' UpSampling2D and image.resize need static sides in graph mode, so the interpolation is two
    matrix products with weights built from the input's dynamic shape (keras.ops only)."""

    def __init__(self, factor: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.factor = int(factor)

    def _weights(self, n_in):
        """(n_in * factor, n_in) linear-interpolation matrix."""
        pos = (ops.cast(ops.arange(n_in * self.factor), "float32") + 0.5) / self.factor - 0.5
        pos = ops.clip(pos, 0.0, ops.cast(n_in - 1, "float32"))
        low = ops.floor(pos)
        frac = (pos - low)[:, None]
        low = ops.cast(low, "int32")[:, None]
        high = ops.minimum(low + 1, n_in - 1)
        cols = ops.arange(n_in)[None, :]
        return (ops.cast(ops.equal(low, cols), "float32") * (1.0 - frac)
                + ops.cast(ops.equal(high, cols), "float32") * frac)

    def call(self, x):
        shape = ops.shape(x)
        rows, cols = self._weights(shape[1]), self._weights(shape[2])
        y = ops.einsum("oh,bhwc->bowc", ops.cast(rows, x.dtype), x)
        return ops.einsum("pw,bowc->bopc", ops.cast(cols, x.dtype), y)

    def compute_output_shape(self, shape):
        scale = lambda side: None if side is None else side * self.factor  # noqa: E731
        return (shape[0], scale(shape[1]), scale(shape[2]), shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


def _conv_bn_relu(x, filters: int, kernel: int, tag: str, rate: int = 1):
    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=rate, use_bias=False,
                      kernel_initializer="he_normal", name=f"{tag}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{tag}_bn")(x)
    return layers.Activation("relu", name=f"{tag}_relu")(x)


def _weights(encoder_weights: str) -> str | None:
    return "imagenet" if encoder_weights == "imagenet" else None


def _settle_batchnorm(encoder: keras.Model) -> keras.Model:
    """Give the encoder's BatchNorms the project's momentum (in place; returns `encoder`).

    keras.applications builds them at 0.99 (EfficientNet) and 0.999 (MobileNetV2): after the CPU zoo
    budget's 200 steps their inference statistics are still 13% / 82% their initial (0, 1), so a model
    trained from scratch validated as all background while its training loss fell. With ImageNet weights
    0.9 only makes fine-tuning adapt the statistics sooner.
    """
    for layer in encoder.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM  # read at every call and saved by get_config
    return encoder


def build_efficient_unet(base_filters: int = 16, outputs: int = 1, encoder_weights: str = "none",
                         name: str = "efficient_unet") -> keras.Model:
    """EfficientNetB0 encoder + U-Net decoder; decoder filters base_filters * 2**i at 1/2**(i+1)... 1/2."""
    inputs = keras.Input((None, None, 3), name="image")
    scaled = layers.Rescaling(255.0, name="to_uint8_range")(inputs)  # EfficientNet preprocesses [0, 255] itself
    encoder = _settle_batchnorm(keras.applications.EfficientNetB0(
        include_top=False, weights=_weights(encoder_weights), input_tensor=scaled))
    x = encoder.get_layer(EFFICIENT_TOP).output
    for j, skip_name in enumerate(EFFICIENT_SKIPS):
        filters = base_filters * 2 ** (len(EFFICIENT_SKIPS) - j)
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{j}")(x)
        x = layers.Concatenate(name=f"skip{j}")([x, encoder.get_layer(skip_name).output])
        x = _conv_bn_relu(_conv_bn_relu(x, filters, 3, f"dec{j}a"), filters, 3, f"dec{j}b")
    x = layers.Conv2DTranspose(base_filters, 2, strides=2, padding="same", name="up_full")(x)
    x = _conv_bn_relu(_conv_bn_relu(x, base_filters, 3, "full_a"), base_filters, 3, "full_b")
    return keras.Model(inputs, head(x, outputs), name=name)


def build_deeplabv3plus(base_filters: int = 16, outputs: int = 1, encoder_weights: str = "none",
                        name: str = "deeplabv3plus") -> keras.Model:
    """DeepLabV3+ on MobileNetV2 (output stride 16); `base_filters` is unused (the paper's 256/48 widths)."""
    del base_filters
    inputs = keras.Input((None, None, 3), name="image")
    scaled = layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(inputs)  # MobileNetV2's [-1, 1]
    encoder = _settle_batchnorm(keras.applications.MobileNetV2(
        include_top=False, weights=_weights(encoder_weights), input_tensor=scaled))
    high, low = encoder.get_layer(MOBILE_HIGH).output, encoder.get_layer(MOBILE_LOW).output
    branches = [_conv_bn_relu(high, 256, 1, "aspp_1x1")]
    branches += [_conv_bn_relu(high, 256, 3, f"aspp_r{r}", rate=r) for r in (6, 12, 18)]
    pooled = _conv_bn_relu(ImagePooling(name="aspp_pool")(high), 256, 1, "aspp_pool")
    x = _conv_bn_relu(layers.Concatenate(name="aspp_cat")([*branches, pooled]), 256, 1, "aspp_proj")
    x = BilinearUp(4, name="up_quarter")(x)
    x = layers.Concatenate(name="decoder_cat")([x, _conv_bn_relu(low, 48, 1, "low")])
    x = _conv_bn_relu(_conv_bn_relu(x, 256, 3, "dec_a"), 256, 3, "dec_b")
    # The head at 1/4, its probabilities upsampled: the full-resolution step interpolates 1-2 channels, not 256.
    return keras.Model(inputs, BilinearUp(4, name="up_full", dtype="float32")(head(x, outputs)), name=name)
