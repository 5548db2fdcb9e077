"""The model zoo: one registry, name -> builder + what it is, so `--model NAME`, `[model] name`, the
README and the tests list the same names (config.ModelName) and every model is built one way.

Every builder is pure Keras 3 (keras layers and keras.ops only, no Lambda, so `safe_mode` loading works),
takes RGB float32 in [0, 1] of any side divisible by its stride (`ModelConfig.stride`) and ends in the
project's head: one sigmoid channel per entry of the output-channel map (mask, then interior).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from tnbc_pipeline.config import ModelConfig, ModelName, choices


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo."""

    build: Callable[[ModelConfig], keras.Model]  # ModelConfig -> an uncompiled model
    about: str  # one line for the README and --help
    # Bumped when the builder changes what it builds for the same settings, so runs made before are not
    # reused (identities record it when > 0: runs of never-revised models keep their identities).
    revision: int = 0


def _unet(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.unet import build_unet

    return build_unet(m.levels, m.base_filters, m.kernel, m.batch_norm, m.dropout, outputs=m.outputs)


def _unet_seed(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.unet import build_unet_seed

    return build_unet_seed(m.levels, m.base_filters, m.kernel, m.dilation, m.dropout, m.batch_norm, outputs=m.outputs)


def _attention_unet(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.unet import build_attention_unet

    return build_attention_unet(m.levels, m.base_filters, m.kernel, m.batch_norm, m.dropout, outputs=m.outputs)


def _multires_unet(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.multires import build_multires_unet

    return build_multires_unet(m.levels, m.base_filters, outputs=m.outputs)


def _unet3plus(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.unet3plus import build_unet3plus

    return build_unet3plus(m.levels, m.base_filters, outputs=m.outputs)


def _swin_unet(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.swin import build_swin_unet

    return build_swin_unet(m.levels, m.base_filters, outputs=m.outputs)


def _efficient_unet(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.backbones import build_efficient_unet

    return build_efficient_unet(m.base_filters, outputs=m.outputs, encoder_weights=m.encoder_weights)


def _deeplabv3plus(m: ModelConfig) -> keras.Model:
    from tnbc_pipeline.model.backbones import build_deeplabv3plus

    return build_deeplabv3plus(m.base_filters, outputs=m.outputs, encoder_weights=m.encoder_weights)


MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec(_unet, "the default U-Net: 3x3 conv + BatchNorm + ReLU, transposed-conv upsampling"),
    "unet_seed": ModelSpec(_unet_seed, "the old system's 'slightly flexible' U-Net, layer for layer"),
    "attention_unet": ModelSpec(_attention_unet, "U-Net with additive attention gates on the skips (Oktay 2018)"),
    "multires_unet": ModelSpec(_multires_unet, "MultiRes blocks + Res paths (Ibtehaz & Rahman 2020)"),
    "unet3plus": ModelSpec(_unet3plus, "UNet 3+ (Huang 2020): every decoder stage aggregates all encoder/decoder scales"),
    "swin_unet": ModelSpec(_swin_unet, "Swin-UNet (Cao 2021): shifted-window transformer blocks in a U-shape"),
    "efficient_unet": ModelSpec(_efficient_unet, "EfficientNetB0 encoder (keras.applications) + U-Net decoder",
                                revision=1),  # 1: encoder BatchNorm momentum 0.99 -> 0.9
    "deeplabv3plus": ModelSpec(_deeplabv3plus, "DeepLabV3+ (Chen 2018): ASPP + decoder on a MobileNetV2 encoder",
                               revision=1),  # 1: encoder BatchNorm momentum 0.999 -> 0.9
}
assert tuple(MODELS) == choices(ModelName), "the registry and config.ModelName must list the same models"


def revision(m: ModelConfig) -> dict[str, int]:
    """For identities: {"model_revision": r} once the builder of `m` was revised, else {}."""
    r = MODELS[m.name].revision
    return {"model_revision": r} if r else {}


# Every module that registers custom objects a saved model may hold (layers, losses, metrics). Keras finds
# them only once registered, and a fresh process (tnbc eval / infer of a finished run) has imported none.
CUSTOM_MODULES = ("losses", "unet", "multires", "unet3plus", "swin", "backbones", "stain_norm")


def load(path: Path) -> keras.Model:
    """A model.keras of any zoo model, loaded with safe_mode (Keras' errors propagate)."""
    for name in CUSTOM_MODULES:
        importlib.import_module(f"tnbc_pipeline.model.{name}")
    return keras.saving.load_model(path, safe_mode=True)


def build(m: ModelConfig) -> keras.Model:
    """The model `m` names, uncompiled; behind a Macenko layer when `m.stain_norm` asks for it."""
    model = MODELS[m.name].build(m)
    if m.stain_norm == "macenko":
        from tnbc_pipeline.model.stain_norm import with_stain_norm

        model = with_stain_norm(model)
    return model
