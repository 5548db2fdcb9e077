"""What `precision = "auto"` means on this machine: the policy measured to train fastest.

No fixed rule is fastest on every CPU (BENCHMARKS.md §3): on a 2-core AMD EPYC mixed_bfloat16 trains 1.3x
faster than float32; on a 2-core Intel Xeon that also reports AVX-512 BF16, float32 is the faster. So on a
CPU that reports native bfloat16, the run's own model trains a few steps of random crops of its own size and
batch in float32 and in mixed_bfloat16 (alternating, ROUNDS times, with op determinism on as `tnbc train`
runs), and the policy of the higher median images/s wins. The answer is kept in a cache file keyed by the
CPU, the TensorFlow/Keras versions and everything the model's speed depends on, so it is measured once per
machine and model (about a minute) and every later run there resolves alike; run and fold identities record
what it resolved to.

The fixed rule is used instead -- mixed_float16 on GPUs of compute capability >= 7.0, float32 on other GPUs
and on CPUs without native bfloat16 -- on GPUs, under multi-worker training (every worker must resolve
alike), and for runs too short to repay the measurement (fewer than MEASURE_MIN_IMAGES crops), where a CPU
with native bfloat16 gets mixed_bfloat16.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

from tnbc_pipeline.config import TrainConfig, identity_dict
from tnbc_pipeline.io import atomic_write_bytes
from tnbc_pipeline.tf_env import tf

log = logging.getLogger(__name__)

MEASURE_MIN_IMAGES = 2000  # crops a run must train to be measured for: ~1 min of measuring is <= 10% of it
WARMUP_STEPS = 2  # untimed steps per policy (tracing, buffers)
MEASURE_STEPS = 3  # timed steps per policy and round
ROUNDS = 3  # the policies alternate, so a slow moment of a busy machine does not fall on one of them only
CANDIDATES = ("float32", "mixed_bfloat16")  # measured where the CPU reports native bfloat16
# answers that could not be written to the cache: a run resolves several times (identity, training) and must
# get one answer
_UNKEPT: dict[str, dict] = {}


def cpu_flags() -> tuple[str, list[str]]:
    """(the CPU's model name, its feature flags) from Linux's /proc/cpuinfo; (platform's name, []) elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor(), []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name, flags


def cpu_has_bf16() -> bool:
    """Whether this CPU reports native bfloat16 (AVX-512 BF16 or AMX)."""
    flags = cpu_flags()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_policy() -> str | None:
    """mixed_float16 when a GPU of compute capability >= 7.0 is visible, float32 for older GPUs, None without."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    fast = any(tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) >= (7, 0) for g in gpus)
    return "mixed_float16" if fast else "float32"


def precision_policy(name: str) -> str:
    """The fixed rule for precision `name`: itself unless auto; auto: the GPU's policy, else mixed_bfloat16 on
    CPUs with native bfloat16, else float32 (float16 and emulated bfloat16 slow CPUs down)."""
    if name != "auto":
        return name
    return gpu_policy() or ("mixed_bfloat16" if cpu_has_bf16() else "float32")


def measured(cfg: TrainConfig) -> bool:
    """Whether `cfg`'s precision is resolved by measurement here (see the module docstring)."""
    return (cfg.precision == "auto" and cfg.strategy != "multi_worker" and cpu_has_bf16()
            and cfg.epochs * cfg.steps_per_epoch * cfg.batch_size >= MEASURE_MIN_IMAGES and gpu_policy() is None)


def cache_path() -> Path:
    """$TNBC_CACHE_DIR, else $XDG_CACHE_HOME/tnbc_pipeline, else ~/.cache/tnbc_pipeline; /speed.json."""
    root = (os.environ.get("TNBC_CACHE_DIR")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tnbc_pipeline")
    return Path(root) / "speed.json"


def cache_key(cfg: TrainConfig) -> str:
    """What a measurement depends on: the CPU, the library versions, the model, the step's shape and loss."""
    import keras

    name, flags = cpu_flags()
    what = {"cpu": name, "flags": sorted(flags), "cores": os.cpu_count(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "model": identity_dict(cfg.model), "batch_size": cfg.batch_size,
            "patch": cfg.patch, "loss": cfg.loss, "jit": cfg.jit, "candidates": CANDIDATES}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def images_per_s(cfg: TrainConfig, policies: tuple[str, ...] = CANDIDATES) -> dict[str, float]:
    """Median images/s of `cfg`'s model training on random crops of its shape, per dtype policy."""
    import keras
    import numpy as np

    from tnbc_pipeline.model.train import build_model, compile_model

    tf.config.experimental.enable_op_determinism()  # as `tnbc train` runs: it picks other kernels
    previous = keras.mixed_precision.global_policy()
    rng = np.random.default_rng(0)
    x = rng.random((cfg.batch_size, cfg.patch, cfg.patch, 3), np.float32)
    y = (rng.random((cfg.batch_size, cfg.patch, cfg.patch, 1 + (cfg.model.interior > 0))) > 0.7).astype(np.float32)
    try:
        models = {}
        for policy in policies:
            keras.mixed_precision.set_global_policy(policy)  # a model keeps the policy it was built under
            models[policy] = build_model(cfg)
            compile_model(models[policy], cfg)
            for _ in range(WARMUP_STEPS):
                models[policy].train_on_batch(x, y)
        seconds: dict[str, list[float]] = {p: [] for p in policies}
        for _ in range(ROUNDS):
            for policy, model in models.items():
                start = time.perf_counter()
                for _ in range(MEASURE_STEPS):
                    model.train_on_batch(x, y)
                seconds[policy].append(time.perf_counter() - start)
        return {p: MEASURE_STEPS * cfg.batch_size / float(np.median(s)) for p, s in seconds.items()}
    finally:
        keras.mixed_precision.set_global_policy(previous)
        keras.backend.clear_session()  # the models built here leave no names or graphs behind


def fastest(rates: dict[str, float]) -> str:
    """The policy of the most images/s; a tie goes to the earlier candidate (float32)."""
    return max(rates, key=lambda p: (rates[p], -list(rates).index(p)))


def resolve(cfg: TrainConfig, measure: Callable[[TrainConfig], dict[str, float]] | None = None) -> str:
    """`cfg`'s precision policy on this machine: as given, by the fixed rule, or measured once and cached."""
    if not measured(cfg):
        return precision_policy(cfg.precision)
    path, key = cache_path(), cache_key(cfg)
    try:
        cache = json.loads(path.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}  # absent or unreadable: measured again and rewritten
    hit = cache.get(key) or _UNKEPT.get(key)
    if isinstance(hit, dict) and hit.get("precision") in CANDIDATES:
        return hit["precision"]
    rates = (measure or images_per_s)(cfg)
    best = fastest(rates)
    log.info("training precision: %s, the fastest measured on this machine (images/s: %s); kept in %s", best,
             ", ".join(f"{p} {r:.2f}" for p, r in rates.items()), path)
    entry = {"precision": best, "images_per_s": {p: round(r, 3) for p, r in rates.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps({**cache, key: entry}, indent=2) + "\n").encode())
    except OSError as exc:  # a read-only home: the answer holds for this process, measured again next time
        log.warning("%s: cannot keep the training-speed measurement (%s)", path, exc)
        _UNKEPT[key] = entry
    return best
