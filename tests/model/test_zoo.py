"""The model zoo: every registered model builds at two input sizes, ends in the project's head (mask +
interior), learns on a fixed batch, survives save -> safe_mode load, and keeps its parameter count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import learns_and_reloads
from tnbc_pipeline.config import ModelConfig, ModelName, TrainConfig, choices
from tnbc_pipeline.errors import TnbcError

# Small widths keep the suite fast; the encoder models' sizes are their encoders'.
ZOO = {"unet": ModelConfig(levels=3, base_filters=4), "unet_seed": ModelConfig(name="unet_seed", levels=3, base_filters=4),
       "attention_unet": ModelConfig(name="attention_unet", levels=3, base_filters=4),
       "multires_unet": ModelConfig(name="multires_unet", levels=3, base_filters=4),
       "unet3plus": ModelConfig(name="unet3plus", levels=3, base_filters=4),
       "swin_unet": ModelConfig(name="swin_unet", levels=3, base_filters=2),
       "efficient_unet": ModelConfig(name="efficient_unet", base_filters=4),
       "deeplabv3plus": ModelConfig(name="deeplabv3plus")}
# Pinned (with the interior head): a change of any architecture shows here. attention_unet is unet plus
# its gates, checked below from their definition.
PARAMS = {"unet": 7_714, "unet_seed": 7_794, "attention_unet": 7_814, "multires_unet": 6_983, "unet3plus": 9_766,
          "swin_unet": 33_098,  # at the defaults (levels 5, base 16): 27.2 M, Swin-UNet's published size
          "efficient_unet": 4_971_305, "deeplabv3plus": 6_526_210}


def test_attention_gates_add_exactly_their_weights() -> None:
    """Per gate at width f: two 1x1 projections to f/2 (with bias) and a 1x1 to one coefficient."""
    gates = sum(2 * (f * (f // 2) + f // 2) + (f // 2 + 1) for f in (4, 8))
    assert PARAMS["attention_unet"] - PARAMS["unet"] == gates == 100


def test_the_zoo_lists_every_configurable_model_once() -> None:
    from tnbc_pipeline.model.registry import MODELS

    assert list(MODELS) == list(choices(ModelName)) == list(ZOO)
    assert TrainConfig(patch=64, model=ModelConfig(name="efficient_unet")).model.stride == 32
    with pytest.raises(TnbcError, match="patch 48 must divide by model efficient_unet's stride 32"):
        TrainConfig(patch=48, model=ModelConfig(name="efficient_unet"))
    with pytest.raises(TnbcError, match="unknown choice 'random'"):
        ModelConfig(encoder_weights="random")


@pytest.mark.parametrize("name", list(ZOO))
def test_every_model_builds_learns_and_reloads(name: str, tmp_path: Path) -> None:
    import dataclasses

    from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

    import keras

    from tnbc_pipeline.model.registry import build

    keras.utils.set_random_seed(0)
    cfg = dataclasses.replace(ZOO[name], interior=1)
    model = build(cfg)
    assert model.count_params() == PARAMS[name]
    rng = np.random.default_rng(0)
    for side in (cfg.stride * 2, cfg.stride * 3):  # two sizes, non-square too
        out = model.predict(rng.random((1, side, side + cfg.stride, 3), dtype=np.float32), verbose=0)
        assert out.shape == (1, side, side + cfg.stride, 2) and 0 <= out.min() and out.max() <= 1
    side = max(64, cfg.stride)
    again = learns_and_reloads(model, rng.random((2, side, side, 3), dtype=np.float32), tmp_path)
    # Every BatchNorm, keras.applications encoders' included, at the project's momentum, kept on reload:
    # at their own 0.99 / 0.999 a from-scratch encoder validated as all background after the CPU budget.
    from tnbc_pipeline.model.unet import BN_MOMENTUM

    for m in (model, again):
        momenta = {layer.momentum for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)}
        assert momenta == (set() if name == "swin_unet" else {BN_MOMENTUM}), (name, momenta)


def test_every_model_trained_in_bfloat16_loads_where_the_global_policy_is_float32(tmp_path: Path) -> None:
    """train() runs under mixed_bfloat16 on CPUs with native bf16 and restores float32 after; eval then loads
    the model. Every layer must keep the policy it was saved with: a Swin block's sublayers took the global
    float32 at load time and its residual sum failed (bfloat16 + float32), so the fold's eval failed."""
    from tnbc_pipeline.tf_env import tf  # noqa: F401

    import keras

    from tnbc_pipeline.model.registry import build

    x = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)  # every model's stride divides 256
    for name, cfg in ZOO.items():
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            keras.utils.set_random_seed(0)
            model = build(cfg)
            want = model.predict(x, verbose=0)
            model.save(tmp_path / f"{name}.keras")
        finally:
            keras.mixed_precision.set_global_policy("float32")
        again = keras.saving.load_model(tmp_path / f"{name}.keras", safe_mode=True)
        assert np.array_equal(again.predict(x, verbose=0), want), name
    # ...and in a fresh process, as `tnbc eval` / `infer` load a finished run: registry.load registers the
    # custom layers first (a Swin run's eval failed with "Could not locate class 'SwinBlock'")
    import subprocess
    import sys

    code = ("import sys; from tnbc_pipeline.model.registry import load; "
            "[load(p) for p in sys.argv[1:]]; print(len(sys.argv) - 1)")
    done = subprocess.run([sys.executable, "-c", code, *sorted(map(str, tmp_path.glob("*.keras")))],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.split()[-1] == str(len(ZOO)), done.stderr[-2000:]


def test_a_revised_builder_is_in_the_identity_and_the_others_keep_theirs() -> None:
    from tnbc_pipeline.model.registry import MODELS
    from tnbc_pipeline.model.train import identity_extras

    revised = {name: spec.revision for name, spec in MODELS.items() if spec.revision}
    assert revised == {"efficient_unet": 1, "deeplabv3plus": 1}
    for name, m in ZOO.items():
        cfg = TrainConfig(patch=64, precision="float32", model=m)
        assert identity_extras(cfg) == ({"model_revision": 1} if name in revised else {})


def test_swin_windows_attend_within_themselves_and_shifted_ones_never_across_the_seam() -> None:
    """A plain block mixes the pixels of one 8x8 window only. A shifted block rolls the map by -4, so the
    window holding (0, 0) gathers rows and columns 12..15 and 0..3 of the map; the mask must keep (0, 0)
    to its own side of that seam: it sees (3, 3), never (15, 15), and nothing of other windows."""
    from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

    import keras

    from tnbc_pipeline.model.swin import SwinBlock

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((1, 16, 16, 6), dtype=np.float32)

    def moves(block, pixel) -> bool:  # does changing `pixel` change the output at (0, 0)?
        y = x.copy()
        y[(0, *pixel, 0)] += 1.0  # one channel: LayerNorm cancels a shift of all of them
        return not np.allclose(np.asarray(block(x))[0, 0, 0], np.asarray(block(y))[0, 0, 0], atol=1e-6)

    plain, shifted = SwinBlock(6, 3), SwinBlock(6, 3, shift=4)
    assert moves(plain, (7, 7)) and not moves(plain, (8, 8))
    assert moves(shifted, (3, 3)) and not moves(shifted, (15, 15)) and not moves(shifted, (7, 7))
