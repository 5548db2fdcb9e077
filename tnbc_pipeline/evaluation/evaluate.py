"""The eval stage: a run's model on a split of the records -> pixel and instance metrics.

    runs/NAME/threshold.json          the probability threshold, chosen on the valid split (max mean Dice) for
                                      the model.keras whose sha256 it records (re-chosen after retraining)
    runs/NAME/eval_{split}/per_image.csv      every metric per image, with key, patient and op
                          per_patient.csv     means per patient (the unit the split is made of)
                          summary.json        means over images and over patients, threshold, settings
                          evaluation.csv      the old system's format (loss, binary_accuracy) + dice, iou, aji, f1, pq
                          comparison.png      image | truth | prediction for the best and worst images by AJI

Only original (un-augmented) images are scored unless asked: metrics of augmented copies are not new
evidence. Images larger than the training patch are predicted in Gaussian-blended tiles.

Post-processing, the same in eval and infer: mask = probability > threshold, objects under `min_area`
pixels removed; nuclei = the interior channel's cores grown over the mask when the model has one
(model.interior > 0), else the distance watershed with --split-touching, else connected components.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation.metrics import MIN_AREA, image_metrics, pixel_metrics, remove_small
from tnbc_pipeline.evaluation.tiling import predict_image
from tnbc_pipeline.io import sha256_file, write_csv, write_json

log = logging.getLogger(__name__)

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))  # 0.2..0.8 was hit at both ends
INSTANCES = ("components", "watershed", "interior")
METRICS = ("dice", "iou", "precision", "recall", "accuracy", "aji", "f1", "pq", "dq", "sq", "bce")


class RunModel:
    """A trained run: its model (loaded with safe_mode=True) and how to call it on one image."""

    def __init__(self, run_dir: Path, tta: bool = False) -> None:
        import keras

        from tnbc_pipeline.model import losses  # noqa: F401 - registers the custom objects
        from tnbc_pipeline.tf_env import tf  # noqa: F401 - Keras' TensorFlow backend

        self.run_dir, self.tta = Path(run_dir), tta
        path = self.run_dir / "model.keras"
        if not path.is_file():
            raise TnbcError(f"{self.run_dir}: no model.keras (train the run first)")
        try:
            self.model = keras.saving.load_model(path, safe_mode=True)
        except Exception as exc:  # Keras raises bare ValueError/TypeError for unsafe or broken files
            raise TnbcError(f"{path}: cannot load the model safely ({str(exc).splitlines()[0][:200]})") from exc
        self.model_sha256 = sha256_file(path)
        config = json.loads((self.run_dir / "config.json").read_text())["config"]
        self.patch = int(config["patch"])
        self.multiple = 2 ** (int(config["model"]["levels"]) - 1)
        self.has_interior = int(config["model"].get("interior", 0)) > 0

    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 (H, W, 3) in [0, 1] -> (nucleus probability float32 (H, W), interior probability
        float32 (H, W) or None for a model without the interior channel)."""
        tile = self.patch if max(image.shape[:2]) > self.patch else None
        maps = predict_image(lambda b: np.asarray(self.model.predict_on_batch(b)), image, tile=tile,
                             multiple=self.multiple, tta=self.tta)
        return maps[..., 0], (maps[..., 1] if self.has_interior else None)

    def instances(self, split_touching: bool, requested: str = "auto") -> str:
        """How predicted nuclei are separated: `requested` (components | watershed | interior), or for
        "auto" the interior channel when the model has one, else the watershed if `split_touching`."""
        if requested == "auto":
            return "interior" if self.has_interior else ("watershed" if split_touching else "components")
        if requested == "interior" and not self.has_interior:
            raise TnbcError(f"{self.run_dir}: the model has no interior channel (train with model.interior > 0)")
        if requested not in INSTANCES:
            raise TnbcError(f"instances must be one of auto, {', '.join(INSTANCES)}; got '{requested}'")
        return requested

    def chosen_threshold(self) -> float | None:
        """threshold.json's value if it was chosen for this very model (same sha256), else None."""
        path = self.run_dir / "threshold.json"
        if path.exists():
            chosen = json.loads(path.read_text())
            if chosen.get("model_sha256") == self.model_sha256:
                return float(chosen["threshold"])
            log.warning("%s was chosen for another model.keras (retrained?); ignoring it", path)
        return None

    def threshold(self) -> float:
        """The chosen threshold, else 0.5."""
        chosen = self.chosen_threshold()
        return 0.5 if chosen is None else chosen


def post_process(prob: np.ndarray, interior: np.ndarray | None, threshold: float, min_area: int,
                 instances: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Probability maps -> (bool mask (H, W) without objects under `min_area` px, keyword arguments of
    `image_metrics` / `instance_labels` that separate its nuclei the `instances` way)."""
    mask = remove_small(prob > threshold, min_area)
    return mask, {"split": instances == "watershed", "interior": interior if instances == "interior" else None}


def _examples(records: Path, split: str, all_ops: bool):
    from tnbc_pipeline.data.pipeline import make_dataset

    ds = make_dataset(records, split, training=False, batch_size=1, ops=() if all_ops else ("original",))
    for batch in ds:
        yield (batch["image"].numpy()[0], batch["mask"].numpy()[0, ..., 0] > 0.5,
               batch["key"].numpy()[0].decode(), batch["patient"].numpy()[0].decode(), batch["op"].numpy()[0].decode())


def choose_threshold(run: RunModel, records: Path, min_area: int = MIN_AREA, progress: bool = True) -> dict[str, Any]:
    """Pick the threshold of highest mean pixel Dice on the valid originals; save threshold.json."""
    probs = [(run.predict(img)[0], truth) for img, truth, *_ in
             tqdm(list(_examples(records, "valid", False)), desc="threshold", disable=not progress)]
    if not probs:
        raise TnbcError(f"{records}: the valid split has no original images to choose a threshold on")
    scores = {t: float(np.mean([pixel_metrics(truth, remove_small(p > t, min_area))["dice"] for p, truth in probs]))
              for t in THRESHOLDS}
    best = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    result = {"threshold": best, "chosen_on": "valid", "criterion": "mean pixel dice", "images": len(probs),
              "min_area": min_area,
              "model_sha256": run.model_sha256,
              "scores": {f"{t:.2f}": round(s, 4) for t, s in scores.items()}}
    write_json(run.run_dir / "threshold.json", result)
    return result


def _bce(truth: np.ndarray, prob: np.ndarray) -> float:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(truth, np.log(p), np.log(1 - p))))


def evaluate(run_dir: Path, records: Path, split: str = "test", threshold: float | None = None,
             split_touching: bool = False, tta: bool = False, all_ops: bool = False,
             min_area: int = MIN_AREA, instances: str = "auto", out: Path | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Score the run on `split`; write `out` (default RUN/eval_{split}/, see the module docstring);
    return summary.json."""
    from tnbc_pipeline.evaluation.plots import image_grid

    run = RunModel(run_dir, tta=tta)
    mode = run.instances(split_touching, instances)
    source = "given"
    if threshold is None:
        threshold = run.chosen_threshold()
        if threshold is None:
            threshold = choose_threshold(run, records, min_area, progress)["threshold"]
        source = "threshold.json (chosen on valid)"
    rows, shown = [], []
    for image, truth, key, patient, op in tqdm(list(_examples(records, split, all_ops)), desc=f"eval {split}",
                                               disable=not progress):
        prob, interior = run.predict(image)
        pred, how = post_process(prob, interior, threshold, min_area, mode)
        m = image_metrics(truth, pred, **how)
        rows.append({"key": key, "patient": patient, "op": op, **{k: round(float(m[k]), 5) for k in METRICS[:-1]},
                     "bce": round(_bce(truth, prob), 5), **{k: m[k] for k in ("tp", "fp", "fn", "n_true", "n_pred")}})
        shown.append((m["aji"], key, image, truth, pred))
    if not rows:
        raise TnbcError(f"{records}: split '{split}' has no images to evaluate")
    out = Path(out) if out is not None else run.run_dir / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "per_image.csv", rows)
    patients = sorted({r["patient"] for r in rows})
    per_patient = [{"patient": p, "images": sum(r["patient"] == p for r in rows),
                    **{k: round(float(np.mean([r[k] for r in rows if r["patient"] == p])), 5) for k in METRICS}}
                   for p in patients]
    write_csv(out / "per_patient.csv", per_patient)
    means = {k: round(float(np.mean([r[k] for r in rows])), 5) for k in METRICS}
    write_csv(out / "evaluation.csv", [{"metric": "loss", "value": means["bce"]},
                                        {"metric": "binary_accuracy", "value": means["accuracy"]},
                                        *({"metric": k, "value": means[k]} for k in ("dice", "iou", "aji", "f1", "pq"))])
    shown.sort(key=lambda s: s[0])
    picks = shown[-3:][::-1] + [s for s in shown[:3] if s not in shown[-3:]]
    image_grid([[img, truth, pred] for _, _, img, truth, pred in picks], ["image", "truth", "prediction"],
               out / "comparison.png", row_labels=[f"{key} AJI {a:.2f}" for a, key, *_ in picks])
    summary = {"split": split, "images": len(rows), "patients": patients, "threshold": threshold,
               "threshold_source": source, "split_touching": split_touching, "instances": mode,
               "min_area": min_area, "tta": tta, "all_ops": all_ops,
               "mean_over_images": means,
               "mean_over_patients": {k: round(float(np.mean([p[k] for p in per_patient])), 5) for k in METRICS}}
    write_json(out / "summary.json", summary)
    return summary
