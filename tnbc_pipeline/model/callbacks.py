"""Keras callbacks of the trainer: best-model checkpoint (atomic, resume-aware), curves, epoch inference."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from tnbc_pipeline.report import image_grid, plot_history, read_history
from tnbc_pipeline.config import MASK_CHANNEL
from tnbc_pipeline.io import recover_dir, replace_dir, staging_dir


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, with its state (weights + epoch) replaced as one unit.

    Keras writes `latest.weights.h5` and `training_metadata.json` in place, so a kill during the write
    leaves a backup that cannot be loaded (seen in our SIGKILL test). Here both go to a staging folder
    that is swapped in with renames; a kill leaves the previous state, which the next run restores.
    Overrides Keras' private `_save_model` / `_load_model` (Keras 3.x).
    """

    def __init__(self, backup_dir: Path) -> None:
        super().__init__(str(backup_dir))
        self._state = Path(backup_dir) / "state"
        self._weights_path = str(self._state / "latest.weights.h5")
        self._training_metadata_path = str(self._state / "training_metadata.json")

    def _load_model(self) -> None:
        recover_dir(self._state, keep=lambda name: False)
        super()._load_model()

    def _save_model(self) -> None:
        staging = staging_dir(self._state)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.model.save_weights(str(staging / "latest.weights.h5"))
        meta = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        (staging / "training_metadata.json").write_text(json.dumps(meta))
        replace_dir(self._state, staging, keep=lambda name: False)


class BestModel(keras.callbacks.Callback):
    """Save the whole model to `path` whenever `monitor` (val_loss) improves, or after every epoch with
    `monitor=None` (a fixed schedule keeps its last weights), via a temporary file and a rename.

    The best value so far is read back from history.csv, so a resumed run keeps the earlier best.
    """

    def __init__(self, path: Path, history_csv: Path, monitor: str | None = "val_loss") -> None:
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        past = [r[monitor] for r in read_history(history_csv) if monitor in r] if monitor else []
        self.best = min(past) if past and self.path.exists() else math.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor) if self.monitor else -math.inf
        if value is not None and value < self.best:
            self.best = float(value) if self.monitor else math.inf
            tmp = self.path.with_name(f".{self.path.stem}.tmp.keras")
            self.model.save(tmp)
            os.replace(tmp, self.path)


class Curves(keras.callbacks.Callback):
    """Redraw train_losses.png and train_metrics.png from history.csv after every epoch."""

    def __init__(self, history_csv: Path, out_dir: Path) -> None:
        super().__init__()
        self.history_csv, self.out_dir = Path(history_csv), Path(out_dir)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        plot_history(read_history(self.history_csv), self.out_dir)


class EpochInference(keras.callbacks.Callback):
    """The old EpochChangeInferencer: after each epoch, image | truth | prediction for fixed valid images,
    saved as `out_dir/epoch_{NNN}.png`. images: float32 (N, H, W, 3) in [0, 1]; masks: (N, H, W, 1)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, keys: list[str], out_dir: Path) -> None:
        super().__init__()
        self.images, self.masks, self.keys, self.out_dir = images, masks, keys, Path(out_dir)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not len(self.images):
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # one plain call per image, not predict(): under a multi-worker strategy predict is a collective
        # step that every worker must join, and only the chief's images matter
        pred = np.stack([keras.ops.convert_to_numpy(self.model(img[None], training=False))[0, ..., MASK_CHANNEL]
                         for img in self.images])
        rows = [[img, msk, p] for img, msk, p in zip(self.images, self.masks, pred)]
        image_grid(rows, ["image", "truth", f"prediction (epoch {epoch + 1})"], self.out_dir / f"epoch_{epoch + 1:03d}.png",
                   row_labels=self.keys)


class WholeValidation(keras.callbacks.Callback):
    """fit's validation, done by every worker on the whole valid set with plain model calls (multi-worker
    training). Sharding a few valid images across workers leaves some worker an empty batch, which fails,
    and not sharding them makes each worker validate only its share of the steps. The trained weights are the
    same on every worker but BatchNorm's moving statistics are each worker's own (Keras keeps them per
    replica); the metric state, made under the strategy, is summed across workers when read, so every worker
    logs the same val_* -- the workers' mean -- and EarlyStopping / ReduceLROnPlateau agree.
    `batches`: (images float32 (B, H, W, 3), targets (B, H, W, C)); `loss`: the compiled loss function;
    `make_metrics`: fresh compile() metrics. Must come first in the callback list: the others read its logs."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]], loss, make_metrics) -> None:
        super().__init__()
        self.batches, self.loss, self.make_metrics = batches, loss, make_metrics

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        loss = keras.metrics.Mean()
        metrics = [m if isinstance(m, keras.metrics.Metric) else keras.metrics.MeanMetricWrapper(m, name=m.__name__)
                   for m in self.make_metrics()]  # as compile() wraps metric functions
        for images, targets in self.batches:
            pred = self.model(images, training=False)
            loss.update_state(self.loss(targets, pred), sample_weight=len(images))  # as fit weighs batches
            for metric in metrics:
                metric.update_state(targets, pred)
        logs["val_loss"] = float(loss.result())
        logs.update({f"val_{m.name}": float(m.result()) for m in metrics})

