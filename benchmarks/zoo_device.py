"""The zoo's training throughput on an accelerator with Keras 3 on JAX (issue 14; no TensorFlow needed).

    KERAS_BACKEND=jax python -m benchmarks.zoo_device [--steps 20] [--out zoo_device.jsonl]

Every registered model is built from its default ModelConfig (the interior channel on, as
configs/tnbc.toml), compiled with the project's loss (BCE+Dice) and AdamW, and trained on fixed random
numpy batches of 8 images at 256x256 and 512x512, in float32 and in mixed bfloat16. Images/s is measured
over `--steps` train steps after 3 warm-up steps (compilation excluded). Appends one JSON line per case to --out (a header line first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def run_case(name: str, side: int, policy: str, steps: int, batch: int) -> dict:
    import keras

    from tnbc_pipeline.config import ModelConfig
    from tnbc_pipeline.model import losses
    from tnbc_pipeline.model.registry import build

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(name=name, interior=2)
    model = build(cfg)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, clipvalue=0.3), loss=losses.LOSSES["bce_dice"])
    rng = np.random.default_rng(0)
    x = rng.random((batch, side, side, 3), dtype=np.float32)
    y = (rng.random((batch, side, side, len(cfg.channels))) > 0.7).astype(np.float32)
    for _ in range(3):
        first = float(np.asarray(model.train_on_batch(x, y)))
    start = time.perf_counter()
    for _ in range(steps):
        last = float(np.asarray(model.train_on_batch(x, y)))
    seconds = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")
    return {"model": name, "side": side, "policy": policy, "batch": batch, "steps": steps,
            "params": int(model.count_params()), "images_per_s": round(steps * batch / seconds, 1),
            "loss_first": round(first, 4), "loss_last": round(last, 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="zoo_device.jsonl")
    parser.add_argument("--models", nargs="*", help="these models only [default: the whole registry]")
    args = parser.parse_args()
    import jax
    import keras

    from tnbc_pipeline.model.registry import MODELS

    device = str(jax.devices()[0])
    header = {"python": platform.python_version(), "jax": jax.__version__, "device": device}
    with open(args.out, "w") as f:
        f.write(json.dumps(header) + "\n")
    for name in args.models or MODELS:
        for side in (256, 512):
            for policy in ("float32", "mixed_bfloat16"):
                try:
                    row = run_case(name, side, policy, args.steps, args.batch)
                except Exception as exc:  # one failing case must not lose the others' numbers
                    row = {"model": name, "side": side, "policy": policy, "error": str(exc).splitlines()[0][:300]}
                row.update(device=device, backend=keras.backend.backend(), keras=keras.__version__)
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:  # row by row: a time limit keeps what was measured
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main()
