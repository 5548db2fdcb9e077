"""Peers trained and scored side by side with ours on a fold (issue 13): same records, same budget, our metrics.

    FOLD/peer_unet_plain/              `tnbc train`'s run folder of the plain U-Net, with eval_test/ (`tnbc eval`)
    FOLD/peer_stardist/model/          StarDist's own model folder (config.json, weights_best.h5, thresholds.json)
    FOLD/peer_stardist/eval_test/      per_image.csv, per_patient.csv, evaluation.csv, summary.json -- the
                                       tables `tnbc eval` writes, from the same `image_metrics`
    FOLD/peer_stardist/identity.json   the peer, its settings and budget, the records' index sha256

The plain U-Net is the baseline every trick must beat: our `unet` architecture and budget with the
interior channel and stain jitter off, scored at threshold 0.5 with connected components and no
small-object removal (nothing chosen on valid but its checkpoint, by validation loss as ours).

StarDist (Schmidt et al. 2018; PyPI `stardist`, the optional extra `peers`) is trained as its authors
recommend for H&E nuclei -- 32 rays, grid 2, per-image percentile normalisation, random flips and 90-degree
rotations -- on every item of the fold's train split (the originals and their augmented variants, as our
model sees), with our training budget: epochs x steps_per_epoch x batch_size crops of `patch` pixels. Its
validation loss picks its checkpoint and `optimize_thresholds` picks its probability and NMS thresholds on
the valid originals; its label images of the test originals are scored by our `image_metrics` against
`truth_labels`, exactly as `tnbc eval` scores ours. A folder of the same identity is reused.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from tnbc_pipeline import identity
from tnbc_pipeline.config import TrainConfig
from tnbc_pipeline.data.records import index_sha256
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation import tables, tune
from tnbc_pipeline.evaluation.metrics import image_metrics
from tnbc_pipeline.io import folder_lock, read_json, recover_dir, replace_dir, staging_dir, write_json

log = logging.getLogger(__name__)

STARDIST_RAYS = 32  # StarDist's 2D default, and what its H&E example uses
STARDIST_GRID = 2  # predict on a 2x subsampled grid: nuclei at 40x are >= 8 px across
PERCENTILES = (1.0, 99.8)  # StarDist's per-image normalisation (csbdeep.utils.normalize)
Predict = Callable[[np.ndarray], np.ndarray]  # float image (H, W, 3) in [0, 1] -> int instance labels (H, W)
PLAIN_SCORING = {"threshold": 0.5, "instances": "components", "min_area": 0, "min_score": 0.0}  # nothing chosen on valid


def plain_config(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with everything beyond a plain U-Net off: no interior channel, no stain or blur jitter, no
    normalisation."""
    return dataclasses.replace(cfg, stain_jitter=0.0, blur_jitter=0.0,
                               model=dataclasses.replace(cfg.model, name="unet", interior=0, stain_norm="none"))


def plain_unet_fold(records: Path, folder: Path, cfg: TrainConfig, progress: bool = True,
                    force: bool = False) -> dict[str, Any]:
    """Train (or reuse) the plain U-Net of `cfg`'s budget in `folder` and score it on test; eval's summary."""
    from tnbc_pipeline.evaluation.evaluate import evaluate
    from tnbc_pipeline.model.train import train

    train(records, folder, plain_config(cfg), progress=progress, replace_stale=force)
    return evaluate(folder, records, "test", dict(PLAIN_SCORING), progress=progress)


def stardist_available() -> bool:
    try:
        import stardist  # noqa: F401
    except ImportError:
        return False
    return True


def score_split(records: Path, split: str, predict: Predict, out: Path, progress: bool = True) -> dict[str, Any]:
    """Score `predict`'s labels of a split's originals with our metrics; write eval's tables into `out`
    and return the summary (`mean_over_images`, `mean_over_patients`, patients, images)."""
    rows = []
    for image, truth, key, patient, op in tqdm(list(tune.examples(records, split, False)), desc=f"peer {split}",
                                               disable=not progress):
        rows.append(tables.image_row(key, patient, op, image_metrics(truth, predict(image))))
    if not rows:
        raise TnbcError(f"{records}: split '{split}' has no images to score")
    Path(out).mkdir(parents=True, exist_ok=True)
    means, patient_means = tables.write_tables(out, rows)
    return {"split": split, "images": len(rows), "patients": sorted({r["patient"] for r in rows}),
            "mean_over_images": means, "mean_over_patients": patient_means}


def _normalise(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> float32, each image scaled by its own 1st and 99.8th percentiles (StarDist's recipe)."""
    lo, hi = np.percentile(image, PERCENTILES)
    return ((image - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)


def _split_arrays(records: Path, split: str, all_ops: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for image, truth, *_ in tune.examples(records, split, all_ops):
        images.append(_normalise(image))
        labels.append(truth.astype(np.uint16))
    if not images:
        raise TnbcError(f"{records}: split '{split}' has no images for the peer")
    return images, labels


def _flip_rot(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StarDist's example augmenter: a random 90-degree rotation and flip of image and labels alike."""
    k, flip = np.random.randint(4), np.random.randint(2)
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    if flip:
        x, y = x[:, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def stardist_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What a StarDist peer depends on besides the records: its version, recipe and our budget."""
    import stardist

    return {"peer": "stardist", "version": stardist.__version__, "n_rays": STARDIST_RAYS, "grid": STARDIST_GRID,
            "percentiles": list(PERCENTILES), "seed": cfg.seed, "epochs": cfg.epochs,
            "steps_per_epoch": cfg.steps_per_epoch, "batch_size": cfg.batch_size, "patch": cfg.patch}


def train_stardist(records: Path, model_dir: Path, cfg: TrainConfig) -> Predict:
    """Train StarDist on the train split of `records` into `model_dir`; choose its thresholds on the valid
    originals; return its predictor (float image -> int32 labels)."""
    import keras
    from stardist.models import Config2D, StarDist2D

    keras.utils.set_random_seed(cfg.seed)
    np.random.seed(cfg.seed)  # StarDist's data generator draws crops with numpy's global generator
    x_train, y_train = _split_arrays(records, "train", all_ops=True)
    x_valid, y_valid = _split_arrays(records, "valid", all_ops=False)
    conf = Config2D(n_rays=STARDIST_RAYS, grid=(STARDIST_GRID, STARDIST_GRID), n_channel_in=3,
                    train_patch_size=(cfg.patch, cfg.patch), train_batch_size=cfg.batch_size,
                    train_epochs=cfg.epochs, train_steps_per_epoch=cfg.steps_per_epoch, train_tensorboard=False)
    model = StarDist2D(conf, name=model_dir.name, basedir=str(model_dir.parent))
    log.info("stardist: training on %d train items, validating on %d originals", len(x_train), len(x_valid))
    model.train(x_train, y_train, validation_data=(x_valid, y_valid), augmenter=_flip_rot,
                epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch)
    model.optimize_thresholds(x_valid, y_valid)
    return lambda image: model.predict_instances(_normalise(image))[0].astype(np.int32)


def peer_identity(records: Path, settings: dict[str, Any]) -> identity.Identity:
    return identity.Identity("peer", settings, {"records_index": index_sha256(records)})


def stardist_fold(records: Path, folder: Path, cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """StarDist trained and scored on one fold's records into `folder` (see the module docstring); reused when
    `folder` records the same identity. Returns eval_test/summary.json."""
    folder = Path(folder)
    identity.claim(folder, "peer")
    wanted = peer_identity(records, stardist_settings(cfg))
    with folder_lock(folder):
        recover_dir(folder, keep=lambda name: False)
        summary_path = folder / "eval_test" / "summary.json"
        if identity.matches(folder, wanted) and summary_path.is_file():
            log.info("%s: StarDist already trained and scored with these settings; reusing it", folder)
            return read_json(summary_path)
        staging = staging_dir(folder)
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "eval_test").mkdir(parents=True)
        predict = train_stardist(records, staging / "model", cfg)
        summary = {**score_split(records, "test", predict, staging / "eval_test", progress),
                   "peer": "stardist", "settings": wanted.settings, "identity": wanted.digest,
                   "thresholds": read_json(staging / "model" / "thresholds.json")}
        write_json(staging / "eval_test" / "summary.json", summary)
        identity.write(staging, wanted)
        replace_dir(folder, staging, keep=lambda name: False)
    return summary


def peer_fold(name: str, records: Path, fold_dir: Path, cfg: TrainConfig, progress: bool = True,
              force: bool = False) -> dict[str, Any]:
    """Peer `name` (config.PeerName) trained and scored on a cv fold's records in FOLD/peer_NAME; its summary."""
    if name == "stardist":
        if not stardist_available():
            raise TnbcError("--peer stardist needs the optional extra: pip install 'tnbc_pipeline[peers]'")
        return stardist_fold(records, fold_dir / f"peer_{name}", cfg, progress)
    if name == "unet_plain":
        return plain_unet_fold(records, fold_dir / f"peer_{name}", cfg, progress, force)
    raise TnbcError(f"unknown peer {name!r}")
