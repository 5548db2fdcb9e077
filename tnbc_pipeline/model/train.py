"""The train stage: TFRecord shards -> a self-describing run folder.

    runs/NAME/identity.json    what made the run: resolved TrainConfig, the records' index.json sha256, tool version
              config.json      resolved TrainConfig + records folder, its manifest hash, tool version
              model.keras      the best model so far (val_loss), written atomically
              backup/          BackupAndRestore state, replaced atomically: a killed run resumes from its last epoch
              history.csv      one row per epoch (loss, metrics, val_*, learning rate)
              train_losses.png, train_metrics.png     curves, redrawn every epoch
              epoch_infer/epoch_NNN.png               image | truth | prediction for fixed valid images
              tensorboard/     when the tensorboard package is installed
              done.json        written last: a finished run is not retrained unless forced

A run folder is reused only for its own identity: a finished or unfinished run of other settings or
other records is refused in one line naming the first setting that differs (`--force` starts over,
`replace_stale` does so only for a run of other settings). After a resume, history.csv holds each
epoch exactly once: rows of epochs the backup does not hold are dropped before training goes on.

Determinism: `keras.utils.set_random_seed(seed)` + TensorFlow op determinism + the seeded, stateless
input pipeline give the same weights for the same seed and data on CPU (one process, one device).
GPUs, several devices and different TensorFlow builds may differ in the last bits.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.util
import io
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tnbc_pipeline import __version__, identity
from tnbc_pipeline.config import TrainConfig, config_hash, identity_dict, split_names, to_dict
from tnbc_pipeline.data.records import index_sha256, read_index
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.model.speed import resolve as resolve_precision
from tnbc_pipeline.model.distribute import fit_under_multi_worker, is_chief, is_multi_worker, make_strategy
from tnbc_pipeline.io import atomic_write_bytes, folder_lock, read_json, recover_dir, write_json
from tnbc_pipeline.report import read_history
from tnbc_pipeline.tf_env import tf

log = logging.getLogger(__name__)

RUN_FILES = ("identity.json", "config.json", "model.keras", "backup", "history.csv", "train_losses.png",
             "train_metrics.png", "epoch_infer", "tensorboard", "done.json",
             "postprocess.json", "threshold.json")  # the last two: eval's choice for this model (and its old name)


def build_model(cfg: TrainConfig):
    """The model the config names, from the zoo (model/registry.py)."""
    from tnbc_pipeline.model.registry import build

    return build(cfg.model)


def compile_model(model, cfg: TrainConfig) -> None:
    import keras

    from tnbc_pipeline.model import losses

    opt_cls = keras.optimizers.AdamW if cfg.optimizer == "adamw" else keras.optimizers.Adam
    kwargs: dict[str, Any] = {"weight_decay": cfg.weight_decay} if cfg.optimizer == "adamw" else {}
    rate: Any = cfg.lr
    if cfg.schedule == "cosine":  # a function of the optimizer's step count, so a resumed run continues it
        rate = keras.optimizers.schedules.CosineDecay(cfg.lr, cfg.epochs * cfg.steps_per_epoch,
                                                      alpha=cfg.min_lr / cfg.lr)
    model.compile(optimizer=opt_cls(learning_rate=rate, clipvalue=cfg.clipvalue, **kwargs),
                  loss=losses.LOSSES[cfg.loss], metrics=losses.metrics(), jit_compile=cfg.jit)


def resolved_precision(cfg: TrainConfig, policy: str | None = None) -> dict[str, str]:
    """What `auto` resolved to on this machine, for identities: {} when float32 (what it meant before
    CPUs got bfloat16) or when the config names its policy, else {"precision": policy}."""
    policy = policy or resolve_precision(cfg)
    return {"precision": policy} if cfg.precision == "auto" and policy != "float32" else {}


def identity_extras(cfg: TrainConfig, policy: str | None = None) -> dict[str, Any]:
    """What a run depends on beyond its TrainConfig, each recorded only where it differs from what it meant
    before it was recorded (older identities stay valid): `resolved_precision` and the builder's revision."""
    from tnbc_pipeline.model.registry import revision

    return {**resolved_precision(cfg, policy), **revision(cfg.model)}


def run_identity(records: Path, cfg: TrainConfig, policy: str | None = None) -> identity.Identity:
    """A run's identity: the TrainConfig (`identity_dict`), `identity_extras`, the sha256 of the records' index.json."""
    return identity.Identity("run", {"config": identity_dict(cfg), **identity_extras(cfg, policy)},
                             {"records_index": index_sha256(records)})


def _clear(run_dir: Path) -> None:
    for name in RUN_FILES:  # only what a run writes: nothing else in the folder is touched
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _other_run(run_dir: Path, old: identity.Identity, wanted: identity.Identity) -> TnbcError:
    """The one-line refusal of a run folder made with other settings or records."""
    return TnbcError(identity.describe(run_dir, identity.differences(old, wanted))
                     + "; use --force to start over, or another --run-dir")


def _prepare_run(run_dir: Path, wanted: identity.Identity, record: dict[str, Any], force: bool,
                 replace_stale: bool) -> bool:
    """Create the run folder `identity.claim` let through; return False when the run is already finished (same
    identity)."""
    if force and run_dir.exists():
        _clear(run_dir)
    old = identity.read(run_dir)
    if old is not None and old.digest != wanted.digest:
        if replace_stale:
            log.info("%s; starting it over", identity.describe(run_dir, identity.differences(old, wanted)))
            _clear(run_dir)
        else:
            raise _other_run(run_dir, old, wanted)
    if (run_dir / "done.json").exists():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    if identity.read(run_dir) is None:
        identity.write(run_dir, wanted)  # the marker first: a kill leaves a folder this stage recognises
        write_json(run_dir / "config.json", record)
    else:
        log.info("resuming the unfinished run in %s (same settings and records)", run_dir)
    return True


def read_done(run_dir: Path) -> dict[str, Any]:
    """done.json, checked: a record that lacks what the run reports is refused in one line."""
    path = run_dir / "done.json"
    done = read_json(path)
    if not (isinstance(done, dict) and type(done.get("epochs_run")) is int and type(done.get("best_epoch")) is int
            and isinstance(done.get("best"), dict)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in done["best"].values())):
        raise TnbcError(f"{path}: malformed run record; use --force to train the run again")
    return done


def completed_epochs(backup_dir: Path) -> int:
    """Epochs the resume state holds (BackupAndRestore's metadata 'epoch'); 0 without a state."""
    state = Path(backup_dir) / "state"
    recover_dir(state, keep=lambda name: False)
    meta = state / "training_metadata.json"
    if not meta.is_file():
        return 0
    data = read_json(meta)
    epoch = data.get("epoch", 0) if isinstance(data, dict) else 0
    return epoch if type(epoch) is int and epoch >= 0 else 0


def trim_history(history_csv: Path, epochs: int) -> None:
    """Keep each of the first `epochs` epochs in history.csv exactly once (the last row logged for it):
    a kill between the CSV row and the backup leaves a row of an epoch that the resume runs again."""
    if not history_csv.exists():
        return
    with open(history_csv, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows: dict[int, dict[str, str]] = {}
        for row in reader:
            try:
                epoch = int(float(row.get("epoch") or ""))
            except ValueError:
                continue  # a line a kill cut short
            if epoch < epochs and None not in row and all(row.get(k) not in (None, "") for k in fields):
                rows[epoch] = row
    if not rows:
        history_csv.unlink()
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[e] for e in sorted(rows))
    atomic_write_bytes(history_csv, buf.getvalue().encode())


def _epoch_samples(records: Path, split: str, count: int) -> tuple[Any, Any, list[str]]:
    import numpy as np

    from tnbc_pipeline.data.pipeline import make_dataset

    if count <= 0:
        return np.zeros((0,)), np.zeros((0,)), []
    originals = make_dataset(records, split, training=False, batch_size=1, ops=("original",)).unbatch()
    batch = next(iter(originals.batch(count)))  # fixed, un-augmented images
    return batch["image"].numpy(), batch["mask"].numpy(), [k.decode() for k in batch["key"].numpy()]


def train(records: Path, run_dir: Path, cfg: TrainConfig, force: bool = False, skip_bad: bool = False,
          progress: bool = True, replace_stale: bool = False) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir` on the train/valid shards of `records`; return done.json.
    A lock beside the run folder makes a second run on it fail at once. `force`: start over whatever the
    folder holds; `replace_stale`: start over only a run of another identity (instead of refusing it).
    Under `strategy = "multi_worker"` only the chief writes `run_dir` (model/distribute.py)."""
    records, run_dir = Path(records), Path(run_dir)
    index_sha256(records)  # bad records are refused before anything is written, the lock included
    # multi_worker: the strategy before any other TensorFlow work (collectives are configured at start-up)
    strategy = make_strategy(cfg.strategy) if cfg.strategy == "multi_worker" else None
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        if strategy is not None and not is_chief(strategy):
            return _train_worker(records, run_dir, cfg, strategy, force, skip_bad, progress, replace_stale)
        with folder_lock(run_dir):
            return _train_locked(records, run_dir, cfg, strategy, force, skip_bad, progress, replace_stale)
    finally:  # what runs next in this process (a peer, a model built by hand) gets the policy it had
        keras.mixed_precision.set_global_policy(previous)


def _train_worker(records: Path, run_dir: Path, cfg: TrainConfig, strategy: Any, force: bool, skip_bad: bool,
                  progress: bool, replace_stale: bool) -> dict[str, Any]:
    """A multi-worker task other than the chief: decides as the chief does (refuse another run's folder,
    reuse a finished one, resume an unfinished one) by reading `run_dir` only, and trains in a temporary
    folder -- seeded with a copy of the chief's resume state -- that is removed when it ends."""
    wanted = run_identity(records, cfg, resolve_precision(cfg))
    old = None if force else identity.read(run_dir)
    resume = old is not None and old.digest == wanted.digest
    if old is not None and not resume and not replace_stale:
        raise _other_run(run_dir, old, wanted)
    if resume and (run_dir / "done.json").exists():
        return read_done(run_dir)
    scratch = Path(tempfile.mkdtemp(prefix="tnbc-worker-"))
    try:
        if resume and (run_dir / "backup").is_dir():
            shutil.copytree(run_dir / "backup", scratch / "backup")
            if (run_dir / "history.csv").exists():
                shutil.copy2(run_dir / "history.csv", scratch / "history.csv")
        return _fit(records, scratch, cfg, strategy, skip_bad, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_locked(records: Path, run_dir: Path, cfg: TrainConfig, strategy: Any, force: bool, skip_bad: bool,
                  progress: bool, replace_stale: bool) -> dict[str, Any]:
    index = read_index(records)
    # new, empty, or a run folder, never a folder of the user's: refused before "auto" times the model (~1 min)
    identity.claim(run_dir, "run")
    wanted = run_identity(records, cfg, resolve_precision(cfg))
    record = {"tool_version": __version__, "config": to_dict(cfg), "config_hash": config_hash(cfg),
              "records": str(records.resolve()), "records_manifest_sha256": index.get("manifest_sha256"),
              "records_index_sha256": wanted.inputs["records_index"]}
    if not _prepare_run(run_dir, wanted, record, force, replace_stale):
        log.info("%s: already trained with these settings and records (identity %s); reusing it",
                 run_dir, wanted.digest[:12])
        return read_done(run_dir)
    return _fit(records, run_dir, cfg, strategy, skip_bad, progress)


def _fit(records: Path, run_dir: Path, cfg: TrainConfig, strategy: Any, skip_bad: bool,
         progress: bool) -> dict[str, Any]:
    """Train into `run_dir` (prepared: identity and config written; or a worker's scratch); done.json."""
    import keras

    from tnbc_pipeline.data.pipeline import make_dataset, training_target
    from tnbc_pipeline.model import losses
    from tnbc_pipeline.model.callbacks import AtomicBackupAndRestore, BestModel, Curves, EpochInference, WholeValidation

    policy = resolve_precision(cfg)  # measured once per machine and model, then cached (model/speed.py)
    history_csv = run_dir / "history.csv"
    trim_history(history_csv, completed_epochs(run_dir / "backup"))

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    if cfg.jit:  # Keras' model_supports_jit: XLA is off on TensorFlow whenever op determinism is on
        log.warning("jit: Keras trains without XLA while TensorFlow op determinism is on, as tnbc train runs")
    keras.mixed_precision.set_global_policy(policy)
    strategy = strategy or make_strategy(cfg.strategy)
    train_ds = make_dataset(records, split_names(cfg.train_on), training=True, batch_size=cfg.batch_size,
                            patch=cfg.patch, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, skip_bad=skip_bad,
                            flip_rot=cfg.flip_rot, interior=cfg.model.interior,
                            interior_target=cfg.model.interior_target, stain_jitter=cfg.stain_jitter,
                            blur_jitter=cfg.blur_jitter)
    # The valid set (a few whole images) is read once and held in memory. Fed as a tf.data pipeline stopped
    # after `validation_steps`, the next epoch's validation waited 20-40 s in about one epoch of three, in
    # Keras' EpochIterator.reset where the previous, unfinished iterator is dropped (py-spy; our reading: its
    # in-flight PNG decoding is awaited) -- a quarter of a fold's training time.
    valid_batches = [(b["image"], training_target(b["labels"][..., None], cfg.model.interior,
                                                  cfg.model.interior_target))
                     for b in make_dataset(records, "valid", training=False, batch_size=cfg.val_batch_size,
                                           skip_bad=skip_bad, ops=cfg.val_ops)]
    if not valid_batches:
        raise TnbcError(f"{records}: the valid split has no items of ops {list(cfg.val_ops)}")
    valid_ds = functools.reduce(tf.data.Dataset.concatenate,  # known cardinality; batches may differ in size
                                [tf.data.Dataset.from_tensors(b) for b in valid_batches])
    multi_worker = is_multi_worker(strategy)  # make_dataset shards by data: each worker its share of a batch
    with strategy.scope():
        model = build_model(cfg)
        compile_model(model, cfg)
    if multi_worker:
        fit_under_multi_worker(model)

    plateau = cfg.schedule == "plateau"
    callbacks = [
        # Row, best model, then the backup: a kill between them leaves a row (and perhaps a model) of an epoch
        # the backup lacks; the resume trims that row (trim_history) and runs the epoch again.
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        BestModel(run_dir / "model.keras", history_csv, monitor="val_loss" if plateau else None),
        AtomicBackupAndRestore(run_dir / "backup"),
        Curves(history_csv, run_dir),
        EpochInference(*_epoch_samples(records, "valid", cfg.epoch_infer), run_dir / "epoch_infer"),
    ]
    if multi_worker:  # first: the callbacks after it read its val_* logs
        callbacks.insert(0, WholeValidation([(x.numpy(), y.numpy()) for x, y in valid_batches], losses.LOSSES[cfg.loss],
                                            losses.metrics))
    if plateau:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                                       restore_best_weights=True))
        if cfg.reduce_lr_factor < 1.0:
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=cfg.reduce_lr_factor,
                                                               patience=cfg.reduce_lr_patience, min_lr=cfg.min_lr))
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))

    start = time.perf_counter()
    with strategy.scope() if multi_worker else contextlib.nullcontext():  # multi_worker: see distribute.py
        fit = model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
                        validation_data=None if multi_worker else valid_ds,
                        callbacks=callbacks, shuffle=False, verbose=1 if progress else 2)
    seconds = time.perf_counter() - start
    history = read_history(history_csv)
    if plateau:
        best = min(history, key=lambda r: r.get("val_loss", float("inf"))) if history else {}
    else:  # the kept weights are the last epoch's
        best = history[-1] if history else {}
    done = {"epochs_run": len(history), "epochs_this_session": len(fit.history.get("loss", [])),
            "best_epoch": int(best.get("epoch", -1)) + 1, "best": {k: v for k, v in best.items() if k != "epoch"},
            "seconds_this_session": round(seconds, 1),
            "train_images_per_s": round(len(fit.history.get("loss", [])) * cfg.steps_per_epoch * cfg.batch_size
                                        / max(seconds, 1e-9), 2),
            "precision": keras.mixed_precision.global_policy().name,
            "replicas": strategy.num_replicas_in_sync, "params": int(model.count_params()),
            # the peak resident memory of the process that trained (ru_maxrss is in KiB on Linux)
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    write_json(run_dir / "done.json", done)
    return done
