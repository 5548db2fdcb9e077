"""The train stage: TFRecord shards -> a self-describing run folder.

    runs/NAME/config.json      resolved TrainConfig + records folder, its manifest hash, tool version
              model.keras      the best model so far (val_loss), written atomically
              backup/          BackupAndRestore state, replaced atomically: a killed run resumes from its last epoch
              history.csv      one row per epoch (loss, metrics, val_*, learning rate)
              train_losses.png, train_metrics.png     curves, redrawn every epoch
              epoch_infer/epoch_NNN.png               image | truth | prediction for fixed valid images
              tensorboard/     when the tensorboard package is installed
              done.json        written last: a finished run is not retrained unless forced

Determinism: `keras.utils.set_random_seed(seed)` + TensorFlow op determinism + the seeded, stateless
input pipeline give the same weights for the same seed and data on CPU (one process, one device).
GPUs, several devices and different TensorFlow builds may differ in the last bits.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tnbc_pipeline import __version__
from tnbc_pipeline.config import TrainConfig, config_hash, to_dict
from tnbc_pipeline.data.records import read_index
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import folder_lock, write_json
from tnbc_pipeline.tf_env import tf

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "model.keras", "backup", "history.csv", "train_losses.png", "train_metrics.png",
             "epoch_infer", "tensorboard", "done.json")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MirroredStrategy over several GPUs, else the default (one device)."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise TnbcError("strategy multi_worker needs the TF_CONFIG environment variable (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def precision_policy(name: str) -> str:
    """auto: mixed_float16 on GPUs of compute capability >= 7.0 (it slows CPUs), else float32."""
    if name != "auto":
        return name
    for gpu in tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (7, 0):
            return "mixed_float16"
    return "float32"


def build_model(cfg: TrainConfig):
    from tnbc_pipeline.model.unet import build_unet, build_unet_seed

    m = cfg.model
    if m.name == "unet_seed":
        return build_unet_seed(m.levels, m.base_filters, m.kernel, m.dilation, m.dropout, m.batch_norm,
                               outputs=m.outputs)
    return build_unet(m.levels, m.base_filters, m.kernel, m.batch_norm, m.dropout, outputs=m.outputs)


def compile_model(model, cfg: TrainConfig) -> None:
    import keras

    from tnbc_pipeline.model import losses

    opt_cls = keras.optimizers.AdamW if cfg.optimizer == "adamw" else keras.optimizers.Adam
    kwargs: dict[str, Any] = {"weight_decay": cfg.weight_decay} if cfg.optimizer == "adamw" else {}
    model.compile(optimizer=opt_cls(learning_rate=cfg.lr, clipvalue=cfg.clipvalue, **kwargs),
                  loss=losses.LOSSES[cfg.loss], metrics=losses.metrics(), jit_compile=cfg.jit)


def _prepare_run(run_dir: Path, record: dict[str, Any], force: bool) -> bool:
    """Create or check the run folder; return False when the run is already finished."""
    if force and run_dir.exists():
        for name in RUN_FILES:  # only what a run writes: nothing else in the folder is touched
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if (run_dir / "done.json").exists():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        if previous.get("config_hash") != record["config_hash"] or previous.get("records") != record["records"]:
            raise TnbcError(f"{run_dir}: holds an unfinished run with other settings or data; "
                            "use another --run-dir, or --force to start over")
        log.info("resuming the unfinished run in %s", run_dir)
    else:
        write_json(config_path, record)
    return True


def _epoch_samples(records: Path, split: str, count: int) -> tuple[Any, Any, list[str]]:
    import numpy as np

    from tnbc_pipeline.data.pipeline import make_dataset

    if count <= 0:
        return np.zeros((0,)), np.zeros((0,)), []
    originals = make_dataset(records, split, training=False, batch_size=1).unbatch().filter(
        lambda ex: tf.strings.regex_full_match(ex["key"], ".*__original"))  # fixed, un-augmented images
    batch = next(iter(originals.batch(count)))
    return batch["image"].numpy(), batch["mask"].numpy(), [k.decode() for k in batch["key"].numpy()]


def train(records: Path, run_dir: Path, cfg: TrainConfig, force: bool = False, skip_bad: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir` on the train/valid shards of `records`; return done.json.
    A lock beside the run folder makes a second run on it fail at once."""
    records, run_dir = Path(records), Path(run_dir)
    with folder_lock(run_dir):
        return _train_locked(records, run_dir, cfg, force, skip_bad, progress)


def _train_locked(records: Path, run_dir: Path, cfg: TrainConfig, force: bool, skip_bad: bool,
                  progress: bool) -> dict[str, Any]:
    import keras

    from tnbc_pipeline.data.pipeline import make_dataset, with_interior
    from tnbc_pipeline.model.callbacks import AtomicBackupAndRestore, BestModel, Curves, EpochInference

    index = read_index(records)
    record = {"tool_version": __version__, "config": to_dict(cfg), "config_hash": config_hash(cfg),
              "records": str(records.resolve()), "records_manifest_sha256": index.get("manifest_sha256")}
    if not _prepare_run(run_dir, record, force):
        log.info("%s is already trained (done.json); pass --force to train it again", run_dir)
        return json.loads((run_dir / "done.json").read_text())

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision_policy(cfg.precision))
    strategy = make_strategy(cfg.strategy)
    train_ds = make_dataset(records, "train", training=True, batch_size=cfg.batch_size, patch=cfg.patch,
                            seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, skip_bad=skip_bad,
                            flip_rot=cfg.flip_rot, interior=cfg.model.interior)
    valid_ds = make_dataset(records, "valid", training=False, batch_size=cfg.val_batch_size, skip_bad=skip_bad,
                            ops=cfg.val_ops)
    n_valid = sum(int(b["key"].shape[0]) for b in valid_ds)  # Keras warns on a finite set of unknown size
    if n_valid == 0:
        raise TnbcError(f"{records}: the valid split has no items of ops {list(cfg.val_ops)}")
    valid_ds = valid_ds.map(lambda b: (b["image"], with_interior(b["mask"], cfg.model.interior)))
    with strategy.scope():
        model = build_model(cfg)
        compile_model(model, cfg)

    history_csv = run_dir / "history.csv"
    callbacks = [
        keras.callbacks.CSVLogger(str(history_csv), append=True),  # before the backup: a kill between the
        AtomicBackupAndRestore(run_dir / "backup"),  # two repeats a row rather than losing one
        BestModel(run_dir / "model.keras", history_csv),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=cfg.reduce_lr_factor,
                                          patience=cfg.reduce_lr_patience, min_lr=cfg.min_lr),
        Curves(history_csv, run_dir),
        EpochInference(*_epoch_samples(records, "valid", cfg.epoch_infer), run_dir / "epoch_infer"),
    ]
    if cfg.reduce_lr_factor == 1.0:
        callbacks = [c for c in callbacks if not isinstance(c, keras.callbacks.ReduceLROnPlateau)]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))

    start = time.perf_counter()
    fit = model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch, validation_data=valid_ds,
                    validation_steps=-(-n_valid // cfg.val_batch_size), callbacks=callbacks, shuffle=False,
                    verbose=1 if progress else 2)
    seconds = time.perf_counter() - start
    from tnbc_pipeline.evaluation.plots import read_history

    history = read_history(history_csv)
    best = min(history, key=lambda r: r.get("val_loss", float("inf"))) if history else {}
    done = {"epochs_run": len(history), "epochs_this_session": len(fit.history.get("loss", [])),
            "best_epoch": int(best.get("epoch", -1)) + 1, "best": {k: v for k, v in best.items() if k != "epoch"},
            "seconds_this_session": round(seconds, 1),
            "train_images_per_s": round(len(fit.history.get("loss", [])) * cfg.steps_per_epoch * cfg.batch_size
                                        / max(seconds, 1e-9), 2),
            "precision": keras.mixed_precision.global_policy().name,
            "replicas": strategy.num_replicas_in_sync}
    write_json(run_dir / "done.json", done)
    return done
