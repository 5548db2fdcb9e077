"""The eval stage: a run's model on a split of the records -> pixel and instance metrics.

    runs/NAME/postprocess.json        the post-processing chosen on the valid split for this model.keras
                                      (see evaluation/tune.py); infer uses it
    runs/NAME/eval_{split}/per_image.csv      every metric per image, with key, patient and op
                          per_patient.csv     means per patient (the unit the split is made of)
                          summary.json        means over images and over patients, the post-processing,
                                              settings, and the identities of the run and of this folder
                          evaluation.csv      the old system's format (loss, binary_accuracy) + dice, iou, aji, f1, pq
                          comparison.png      image | truth | prediction for the best and worst images by AJI
                          identity.json       model sha256, records index sha256, split, TTA, post-processing
                          labels/, geojson/, nuclei.csv   the scored nuclei as objects (see inference/objects.py)

A folder whose identity matches is reused (one info line); any difference -- another model, other
records, another threshold, min-area or instance method -- scores again. The new folder is built beside
the old one and swapped in, so an interrupted eval leaves the previous scores intact.

Only original (un-augmented) images are scored unless asked: metrics of augmented copies are not new
evidence. Images larger than the training patch are predicted in Gaussian-blended tiles.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tnbc_pipeline import identity
from tnbc_pipeline.config import DEFAULT_TUNE_BY, DEFAULT_TUNE_ON, MASK_CHANNEL, to_dict
from tnbc_pipeline.data.records import index_sha256
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation import tables, tune
from tnbc_pipeline.evaluation.metrics import image_metrics
from tnbc_pipeline.inference.objects import MEASUREMENTS, save_objects
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.inference.predictor import RunModel
from tnbc_pipeline.io import folder_lock, read_json, recover_dir, replace_dir, staging_dir, write_csv, write_json

log = logging.getLogger(__name__)

EVAL_FILES = ("per_image.csv", "per_patient.csv", "summary.json", "evaluation.csv", "comparison.png", identity.FILE,
              "labels", "geojson", "nuclei.csv")


def _foreign(name: str) -> bool:
    """Entries of an eval folder that eval did not write (carried across a rescoring)."""
    return name not in EVAL_FILES


def _bce(truth: np.ndarray, prob: np.ndarray) -> float:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(truth, np.log(p), np.log(1 - p))))


def eval_identity(run: RunModel, records_index: str, split: str, all_ops: bool, post: dict[str, Any]) -> identity.Identity:
    return identity.Identity("eval", {"split": split, "all_ops": all_ops, "tta": run.tta, "postprocess": post},
                             {"model": run.model_sha256, "records_index": records_index})


def evaluate(run_dir: Path, records: Path, split: str = "test", overrides: dict[str, Any] | None = None,
             tta: bool = False, all_ops: bool = False, out: Path | None = None,
             progress: bool = True, tune_by: str = DEFAULT_TUNE_BY, tune_on: str = DEFAULT_TUNE_ON) -> dict[str, Any]:
    """Score the run on `split` with its post-processing (`overrides`: PostProcess fields given by the
    user; the others chosen on the `tune_on` originals to maximise `tune_by`, see tune.py); write `out` (default
    RUN/eval_{split}/, see the module docstring); return summary.json."""
    from tnbc_pipeline.report import image_grid

    records = Path(records)
    out = Path(out) if out is not None else Path(run_dir) / f"eval_{split}"
    identity.claim(out, "eval")  # before any work: never score into a folder of the user's
    run = RunModel(run_dir, tta=tta)
    records_index = index_sha256(records)
    post, source, _ = tune.resolve(run, records, records_index, overrides or {}, tune_by, progress, tune_on)
    wanted = eval_identity(run, records_index, split, all_ops, to_dict(post))
    with folder_lock(out):
        recover_dir(out, keep=_foreign)
        identity.claim(out, "eval")
        if identity.matches(out, wanted) and (out / "summary.json").is_file():
            log.info("%s: already scored with these settings (identity %s); reusing it", out, wanted.digest[:12])
            return read_json(out / "summary.json")
        staging = staging_dir(out)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        rows, shown, nuclei = [], [], []
        predict_s, pixels = 0.0, 0
        for image, truth, key, patient, op in tqdm(list(tune.examples(records, split, all_ops)),
                                                   desc=f"eval {split}", disable=not progress):
            start = time.perf_counter()
            probs = run.predict(image)
            predict_s += time.perf_counter() - start
            pixels += image.shape[0] * image.shape[1]
            labels = segment(probs, run.channels, post)
            nuclei += save_objects(staging, f"{key}.png", labels, np.round(image * 255).astype(np.uint8),
                                   probs[..., MASK_CHANNEL])
            m = image_metrics(truth, labels)
            rows.append(tables.image_row(key, patient, op, m, _bce(truth > 0, probs[..., MASK_CHANNEL])))
            shown.append((m["aji"], key, image, truth > 0, labels > 0))
        if not rows:
            raise TnbcError(f"{records}: split '{split}' has no images to evaluate")
        means, patient_means = tables.write_tables(staging, rows)
        write_csv(staging / "nuclei.csv", nuclei, fields=["image", "id", *MEASUREMENTS])
        shown.sort(key=lambda s: s[0])
        picks = shown[-3:][::-1] + [s for s in shown[:3] if s not in shown[-3:]]
        image_grid([[img, truth, pred] for _, _, img, truth, pred in picks], ["image", "truth", "prediction"],
                   staging / "comparison.png", row_labels=[f"{key} AJI {a:.2f}" for a, key, *_ in picks])
        summary = {"split": split, "images": len(rows), "patients": sorted({r["patient"] for r in rows}),
                   "postprocess": to_dict(post), "postprocess_source": source, "tune_by": tune_by, "tune_on": tune_on,
                   "threshold": post.threshold,
                   "instances": post.instances, "min_area": post.min_area, "tta": tta, "all_ops": all_ops,
                   "mean_over_images": means,
                   "mean_over_patients": patient_means,
                   "model_sha256": run.model_sha256, "run_identity": run.identity, "identity": wanted.digest,
                   # the model's forward passes only (tiles, TTA), not the post-processing or the metrics
                   "predict_megapixels_per_s": round(pixels / 1e6 / max(predict_s, 1e-9), 3)}
        write_json(staging / "summary.json", summary)
        identity.write(staging, wanted)
        replace_dir(out, staging, keep=_foreign)
    return summary
